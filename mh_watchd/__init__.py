"""mh-watchd: a watch-folder daemon for Magic Hour's video-to-video API."""

__version__ = "0.1.0"
