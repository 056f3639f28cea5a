"""imagefactory: turn a declarative recipe into a sealed, boot-tested golden VM image."""

__version__ = "0.1.0"
