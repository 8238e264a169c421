"""Motion: animatics (timed scene stills with camera moves, encoded to MP4) and scene clips.

    moves.py     the camera moves as crop boxes over a still
    encode.py    the MP4 writer (PyAV: H.264, yuv420p) and reader
    animatic.py  story -> timeline -> frames -> a video artifact
    clips.py     `echo-os animate`: a scene image -> an image-to-video clip artifact
"""
