"""semiseg's MONAI Label tasks: bundle inference with its uncertainty map, semi-supervised bundle training from the
datastore's labelled and unlabelled images, and uncertainty sampling (see docs/monailabel.md)."""
