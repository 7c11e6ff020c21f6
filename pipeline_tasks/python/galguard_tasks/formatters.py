"""Butler formatter for FITS cutout stacks.

`CutoutStackFitsFormatter` lets a Butler read FITS cutout stacks (the layout written by
``galguard.sim.write_fits(..., stack=True)``: a primary (N, C, H, W) image and a ``CATALOG``
table) as ``galguard_cutouts`` tables (storage class ``ArrowAstropy``, Python type
`astropy.table.Table`), and write such tables back as stacks.

Typical use is ingesting existing stacks without converting them::

    butler ingest-files -t direct \\
        --formatter galguard_tasks.formatters.CutoutStackFitsFormatter \\
        REPO galguard_cutouts RUN files.csv

or configuring a datastore to write a dataset type as FITS (``datastore: formatters:`` in the
repository seed configuration, see ``pipeline_tasks/config/butler_fits_seed.yaml``).
"""

import logging

from astropy.table import Table

from lsst.daf.butler import FormatterV2

from .tables import read_cutout_stack, write_cutout_stack

__all__ = ["CutoutStackFitsFormatter"]

log = logging.getLogger(__name__)


class CutoutStackFitsFormatter(FormatterV2):
    """Read and write ``galguard_cutouts`` tables as FITS cutout stacks.

    Reading returns the storage class's Python type (an `astropy.table.Table` for
    ``ArrowAstropy``) with columns ``id``, ``image`` and, where the file has them, ``gain``,
    ``sky``, ``exptime`` and ``band``. Read parameters are applied by the storage class's
    delegate after reading.
    """

    default_extension = ".fits"
    supported_extensions = frozenset({".fits", ".fit", ".fits.gz", ".fz"})
    # Read parameters (``columns``, ``filters``) are left to the storage class's delegate.
    unsupported_parameters = None
    can_read_from_local_file = True

    def read_from_local_file(self, path, component=None, expected_size=-1):
        """Read a cutout stack from a local file.

        Parameters
        ----------
        path : str
            Local file.
        component : str, optional
            A derived component (``rowcount``, ``columns``, ...), extracted from the table by the
            storage class's delegate.
        expected_size : int, optional
            Unused.

        Returns
        -------
        astropy.table.Table
        """
        table = read_cutout_stack(path)
        pytype = self.file_descriptor.storageClass.pytype
        if not issubclass(pytype, Table):
            raise TypeError(
                f"{type(self).__name__} reads astropy tables, but the storage class "
                f"{self.file_descriptor.storageClass.name} wants {pytype}")
        if component is not None:
            return self.file_descriptor.storageClass.delegate().getComponent(table, component)
        return table

    def write_local_file(self, in_memory_dataset, uri):
        """Write a cutout table as a FITS stack.

        Parameters
        ----------
        in_memory_dataset : astropy.table.Table
            A ``galguard_cutouts`` table.
        uri : lsst.resources.ResourcePath
            Local destination.
        """
        write_cutout_stack(in_memory_dataset, uri.ospath, overwrite=True)
        log.debug("wrote %d cutouts to %s", len(in_memory_dataset), uri.ospath)
