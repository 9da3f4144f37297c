"""The page: Gradio components wired to the demo's plain modules (videos, masks, networks, jobs).

Handlers never let an exception reach the page: what the user gave wrong comes back as a sentence in the
status line beside it (``InputError``, ``CheckpointError``, ``ConfigError``, ``DatasetError``), anything else
as a one-line "something went wrong" with the details in the server log. Per-session state (the video, the
base mask, the box corners) lives in ``gr.State``; per-session files in the ``JobBoard``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

import gradio as gr

from mavos.checkpoints.loading import CheckpointError
from mavos.data.records import DatasetError
from mavos.errors import MavosError
from mavos.demo import masks as mask_tools
from mavos.demo.jobs import JobBoard, JobCancelled, RunRequest, run_job
from mavos.demo.measure import memory_label
from mavos.demo.networks import RANDOM, RANDOM_WARNING, NetworkCache, checkpoint_choices, default_checkpoint
from mavos.demo.settings import RESOLUTIONS, DemoSettings
from mavos.demo.videos import BenchmarkVideos, InputError, open_uploaded_video
from mavos.registry import ConfigError

log = logging.getLogger(__name__)

AS_TRAINED = "as trained"
OWN_GAP = "own (mca 10, bank 5)"
BOX_IMAGE_WIDTH = 320  # pixels the GrabCut image is shown at, at least
ID_BANK = 10  # objects per group of every model config; the run itself asks the network
EXPECTED = (MavosError, InputError, CheckpointError, ConfigError, DatasetError)  # messages a user can act on

INTRO = """# MAVOS: segment your own video
Give the objects in the first frame; the model follows them through the video. MAVOS keeps a long-term memory
of **two slots** however long the video is; DeAOT's memory bank (`bank`) grows with every memory frame. Tick
*compare* to run both on the same video and watch per-frame time and memory."""

MASK_HELP = """Paint each object with its own colour (colour *k* is object *k*, as in the result PNGs; **black**
paints background, to erase part of an object), or upload a mask PNG (palette PNG of object ids, or a black/white
PNG for one object), or click two corners of a box on the small image and let GrabCut find the object in it.
Uploads and GrabCut show under the brush, so you can correct them by painting."""


def _problem(error: Exception) -> str:
    if isinstance(error, EXPECTED):
        return f"**Cannot do that:** {error}"
    log.exception("demo handler failed")
    return (f"**Something went wrong** ({type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}); "
            f"the server log has the details. The app keeps running.")


def _legend() -> str:
    cells = []
    for k, colour in enumerate(mask_tools.brush_colours()):
        name = "background" if k == 0 else str(k)
        text = "white" if int(mask_tools.PALETTE[k].astype(int).sum()) < 300 else "black"
        cells.append(f'<span style="background:{colour};color:{text};padding:1px 6px;border-radius:3px;'
                     f'margin-right:2px;font-size:12px">{name}</span>')
    return "<div>" + "".join(cells) + "</div>"


def _editor_value(video, base) -> dict | None:
    if video is None:
        return None
    return {"background": mask_tools.mask_preview(video.first_frame, base), "layers": [], "composite": None}


def _box_zoom(video) -> int:
    """The GrabCut image shows small frames enlarged (Gradio shows an image no larger than its pixels, and
    only maps clicks on what it shows); clicks come back in enlarged pixels."""
    return max(1, -(-BOX_IMAGE_WIDTH // video.width))


def _box_image(video, corners: list) -> np.ndarray | None:
    """The first frame (enlarged by ``_box_zoom``) with the clicked corners and the box between them."""
    if video is None:
        return None
    zoom = _box_zoom(video)
    image = cv2.resize(video.first_frame, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    thickness = max(1, round(max(image.shape[:2]) / 300))
    points = [(int(x * zoom + zoom // 2), int(y * zoom + zoom // 2)) for x, y in corners]
    for point in points:
        cv2.drawMarker(image, point, (255, 255, 0), cv2.MARKER_CROSS, 6 * thickness, thickness)
    if len(points) == 2:
        cv2.rectangle(image, points[0], points[1], (255, 255, 0), thickness)
    return image


def _current_mask(video, base, editor) -> np.ndarray:
    if video is None:
        raise InputError("load a video first (upload one, or pick an embedded benchmark video)")
    layers = (editor or {}).get("layers") or []
    return mask_tools.apply_strokes(base, layers, (video.height, video.width))


def _plots(result) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-frame time and memory of every run, frame 0 (the reference frame) left out."""
    rows = pd.DataFrame([s.__dict__ for s in result.stats if s.frame > 0])
    return rows[["frame", "ms", "memory"]], rows[["frame", "memory_mb", "memory"]]


def build_app(settings: DemoSettings) -> tuple[gr.Blocks, JobBoard]:
    """The Gradio app and the job board that owns its per-session files (close it on shutdown)."""
    root = Path(settings.root)
    device = torch.device("cuda" if settings.device == "auto" and torch.cuda.is_available() else
                          "cpu" if settings.device == "auto" else settings.device)
    networks = NetworkCache(root, device, started_with=settings.ckpt_path)
    board = JobBoard(settings.jobs_dir)
    benchmark = BenchmarkVideos(root / "data" / "synthetic_davis", **settings.benchmark)
    resolution = settings.resolution or ("480" if device.type == "cuda" else "240")
    default_ckpt = default_checkpoint(root, settings.ckpt_path)
    choices = list(dict.fromkeys([default_ckpt, *checkpoint_choices(root), RANDOM]))

    # ------------------------------------------------------------------ handlers
    def loaded(video, base, message):
        return {video_state: video, base_state: base, corners_state: [], editor: _editor_value(video, base),
                box_image: _box_image(video, []), video_status: message,
                mask_status: "" if base is None else mask_tools.check_first_mask(base, ID_BANK)}

    def load_upload(path):
        if not path:
            return loaded(None, None, "")
        try:
            video = open_uploaded_video(path, settings.max_upload_mb, settings.max_frames)
        except Exception as e:
            return loaded(None, None, _problem(e))
        return loaded(video, None, video.describe())

    def load_benchmark(name, progress=gr.Progress()):
        try:
            if not benchmark.ready():
                progress(0.1, desc="generating the embedded benchmark (first use; about a minute)")
            video = benchmark.load(name or None)
        except Exception as e:
            return {video_status: _problem(e)}
        out = loaded(video, video.first_mask, video.describe() + " (its first-frame annotation is the mask below)")
        out[bench_name] = gr.update(choices=benchmark.names(), value=video.name)
        return out

    def load_mask(path, video):
        if not path:
            return {}
        try:
            if video is None:
                raise InputError("load a video before its mask")
            base = mask_tools.read_uploaded_mask(path, (video.height, video.width))
            note = mask_tools.check_first_mask(base, ID_BANK)
        except Exception as e:
            return {mask_status: _problem(e)}
        return {base_state: base, editor: _editor_value(video, base), mask_status: f"Mask loaded: {note}"}

    def click_corner(video, corners, event: gr.SelectData):
        if video is None:
            return {}
        zoom = _box_zoom(video)
        corner = (min(int(event.index[0]) // zoom, video.width - 1), min(int(event.index[1]) // zoom, video.height - 1))
        corners = ([] if len(corners) >= 2 else list(corners)) + [corner]
        return {corners_state: corners, box_image: _box_image(video, corners)}

    def apply_grabcut(video, base, editor_value, corners, object_id):
        try:
            mask = _current_mask(video, base, editor_value)
            if len(corners) != 2:
                raise InputError("click two opposite corners of a box around the object on the GrabCut image first")
            region = mask_tools.grabcut(video.first_frame, (*corners[0], *corners[1]))
            mask = mask_tools.add_object(mask, region, int(object_id or 1))
            note = mask_tools.check_first_mask(mask, ID_BANK)
        except Exception as e:
            return {mask_status: _problem(e)}
        return {base_state: mask, editor: _editor_value(video, mask), corners_state: [],
                box_image: _box_image(video, []), mask_status: f"GrabCut added object {int(object_id or 1)}: {note}"}

    def clear_mask(video):
        return {base_state: None, editor: _editor_value(video, None), mask_status: "Mask cleared."}

    def checkpoint_changed(checkpoint):
        return gr.update(visible=checkpoint == RANDOM)

    def run(video, base, editor_value, checkpoint, memory, short_edge, gap, compare, request: gr.Request,
            progress=gr.Progress()):
        try:
            mask = _current_mask(video, base, editor_value)
            note = mask_tools.check_first_mask(mask, networks.get(checkpoint or RANDOM, None)[0].max_objects)
        except Exception as e:
            return {run_status: _problem(e)}
        job = board.new_job(request.session_hash)
        run_request = RunRequest(video=video, mask=mask, checkpoint=checkpoint or RANDOM,
                                 memory=None if memory == AS_TRAINED else memory, compare=bool(compare),
                                 max_short_edge=None if short_edge == "original" else int(short_edge),
                                 long_term_gap=None if gap == OWN_GAP else int(gap))
        try:
            result = run_job(run_request, job, networks,
                             progress=lambda fraction, text: progress(fraction, desc=text))
            times, memories = _plots(result)
        except JobCancelled:
            return {run_status: "Cancelled; the run's files were removed."}
        except Exception as e:
            return {run_status: _problem(e)}
        lines = [f"Done: {video.name}, {note}."] + [
            f"- {result.summary(m)}. {result.notes[m]}" for m in result.memories]
        if checkpoint == RANDOM:
            lines.append("- Random weights: the masks are meaningless.")
        return {run_status: "\n".join(lines), overlay: str(result.video_path), time_plot: times,
                memory_plot: memories, downloads: [str(result.zip_path), str(result.video_path)]}

    def cancel(request: gr.Request):
        stopped = board.cancel(request.session_hash)
        return "Cancelled; the run's files were removed." if stopped else "Nothing is running."

    def closed(request: gr.Request):
        board.close(request.session_hash)

    # ------------------------------------------------------------------ layout
    # Gradio removes uploads a day old (checked hourly): a long compare run reads its video again at the end
    with gr.Blocks(title="MAVOS demo", analytics_enabled=False, delete_cache=(3600, 86400)) as app:
        video_state, base_state, corners_state = gr.State(None), gr.State(None), gr.State([])
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column():
                with gr.Tab("Your video"):
                    video_file = gr.File(label=f"Video (mp4, mov, webm; up to {settings.max_upload_mb:g} MB and "
                                               f"{settings.max_frames} frames)", type="filepath", elem_id="video-upload")
                with gr.Tab("Embedded benchmark"):
                    bench_name = gr.Dropdown(choices=benchmark.names(), value=None, label="Val video",
                                             elem_id="benchmark-video")
                    bench_load = gr.Button("Load this video (generates the benchmark on first use)")
                video_status = gr.Markdown(elem_id="video-status")
            with gr.Column():
                checkpoint = gr.Dropdown(choices=choices, value=default_ckpt, label="Checkpoint",
                                         allow_custom_value=True, elem_id="checkpoint")
                warning = gr.Markdown(RANDOM_WARNING, visible=default_ckpt == RANDOM, elem_id="random-warning")
                memory = gr.Radio([AS_TRAINED, "mca", "bank"], value=AS_TRAINED, label="Long-term memory",
                                  elem_id="memory")
                with gr.Row():
                    short_edge = gr.Dropdown(list(RESOLUTIONS), value=resolution,
                                             label="Inference resolution (short edge)", elem_id="resolution")
                    gap = gr.Dropdown([OWN_GAP, "2", "5", "10", "20"], value=OWN_GAP,
                                      label="Long-term memory gap (frames)", elem_id="gap")
                compare = gr.Checkbox(label="Compare: also run the other memory on this video (same weights outside "
                                            "the memory) and plot both", elem_id="compare")
        gr.Markdown("## First-frame mask\n" + MASK_HELP)
        gr.HTML(_legend())
        with gr.Row():
            with gr.Column(scale=3):
                editor = gr.ImageEditor(label="Paint objects", type="numpy", image_mode="RGBA", format="png",
                                        sources=(), transforms=(), layers=False, elem_id="mask-editor",
                                        brush=gr.Brush(colors=mask_tools.brush_colours(), color_mode="fixed",
                                                       default_color=mask_tools.brush_colours()[1]))
            with gr.Column(scale=2):
                mask_file = gr.File(label="Or upload a mask PNG", type="filepath", elem_id="mask-upload")
                gr.Markdown("GrabCut: click two opposite corners of a box around one object on this image")
                box_image = gr.Image(show_label=False, interactive=False, height=240, buttons=[], format="png",
                                     elem_id="box-image")
                with gr.Row():
                    object_id = gr.Number(value=1, precision=0, minimum=1, maximum=254, label="as object",
                                          elem_id="grabcut-object")
                    grabcut_button = gr.Button("GrabCut the box", elem_id="grabcut")
                clear_button = gr.Button("Clear the mask")
        mask_status = gr.Markdown(elem_id="mask-status")
        with gr.Row():
            run_button = gr.Button("Run", variant="primary", elem_id="run")
            cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
        run_status = gr.Markdown(elem_id="run-status")
        with gr.Row():
            overlay = gr.Video(label="Overlay", interactive=False, elem_id="overlay")
            with gr.Column():
                time_plot = gr.LinePlot(x="frame", y="ms", color="memory", title="Time per frame (ms)",
                                        y_title="ms", elem_id="time-plot")
                memory_plot = gr.LinePlot(x="frame", y="memory_mb", color="memory", title=memory_label(device),
                                          y_title="MB", elem_id="memory-plot")
        downloads = gr.File(label="Downloads: masks (zip) and overlay video (mp4)", file_count="multiple",
                            interactive=False, elem_id="downloads")

        # -------------------------------------------------------------- events
        loaded_outputs = [video_state, base_state, corners_state, editor, box_image, video_status, mask_status]
        video_file.upload(load_upload, video_file, loaded_outputs)
        video_file.clear(load_upload, video_file, loaded_outputs)
        # Events that may leave the editor as it is (a refused mask, a failed GrabCut or benchmark load) show their
        # progress on their status line: with the editor as a progress target, Gradio 6.31's status over the
        # editor stayed "processing" for good after such an event in about 1 of 5 runs of the browser test,
        # covering the canvas (tests/test_demo_browser.py).
        bench_load.click(load_benchmark, bench_name, [*loaded_outputs, bench_name], show_progress_on=[video_status])
        mask_file.upload(load_mask, [mask_file, video_state], [base_state, editor, mask_status],
                         show_progress_on=[mask_status])
        box_image.select(click_corner, [video_state, corners_state], [corners_state, box_image],
                         trigger_mode="multiple", concurrency_limit=1)  # clicks in order, none dropped
        grabcut_button.click(apply_grabcut, [video_state, base_state, editor, corners_state, object_id],
                             [base_state, editor, corners_state, box_image, mask_status],
                             show_progress_on=[mask_status])
        clear_button.click(clear_mask, video_state, [base_state, editor, mask_status])
        checkpoint.change(checkpoint_changed, checkpoint, warning)
        run_event = run_button.click(
            run, [video_state, base_state, editor, checkpoint, memory, short_edge, gap, compare],
            [run_status, overlay, time_plot, memory_plot, downloads],
            concurrency_limit=settings.max_jobs, concurrency_id="run", show_progress_on=[run_status])
        cancel_button.click(cancel, None, run_status, cancels=[run_event])
        app.unload(closed)
    app.queue(default_concurrency_limit=4)
    return app, board


def launch(settings: DemoSettings, block: bool = True) -> tuple[gr.Blocks, JobBoard]:
    """Serve the app on settings.host:settings.port (local only by default)."""
    app, board = build_app(settings)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts: works offline
    app.launch(server_name=settings.host, server_port=int(settings.port), max_file_size=int(settings.max_upload_mb * 2 ** 20),
               ssr_mode=False, prevent_thread_lock=not block, show_error=False, theme=theme,
               allowed_paths=[str(settings.jobs_dir)], quiet=False)
    return app, board
