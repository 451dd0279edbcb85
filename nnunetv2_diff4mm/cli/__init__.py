"""Console scripts of nnunetv2-diff4mm (thin argparse layers over the library)."""
