"""facepose: one-shot, pose-driven talking-head rendering."""
__version__ = "0.1.0"
