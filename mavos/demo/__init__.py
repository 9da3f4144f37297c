"""A local web app (Gradio) to segment your own video with MAVOS, and to watch its memory stay flat.

``python -m mavos.demo [ckpt_path=...] [port=7860]``. The app is a thin page over plain modules that are
tested without a browser: ``settings`` (command line), ``videos`` (reading and checking inputs), ``masks``
(the first-frame mask from painting, an uploaded PNG or GrabCut), ``networks`` (checkpoints and the two
memories), ``jobs`` (one propagation run per browser session, through ``InferenceSession``), ``measure`` (the
per-frame memory figure), ``outputs`` (the files a run offers); ``app`` wires them to Gradio components.
Nothing in mavos imports this package.
"""
