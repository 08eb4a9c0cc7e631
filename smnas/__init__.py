"""smnas: detector architecture search (SM-NAS / SP-NAS) on torchvision parts."""

__version__ = "0.1.0"
