"""evmamba.render (layer 3, beside the pipeline): pictures of event streams (``evmamba view``).

* :mod:`.images` -- accumulated event frames (ON / OFF colours) of a camera, raster plots of spike data
  (time on x, channel on y), and the plan of frame windows over a recording;
* :mod:`.panel` -- the class-probability panel drawn beside a frame (probabilities over time, the top
  classes now and the current decision);
* :mod:`.output` -- animated GIF, MP4 (when an encoder is installed) and a grid of frames as one PNG.

Images are ``(H, W, 3)`` uint8 RGB numpy arrays until an output writes them; drawing text and lines uses
Pillow. Nothing here imports the model: the caller hands the panel its probabilities.
"""
