"""How fast the host produces training batches: decoding into the cache, then batches per second.

Builds the paper's training transform (bicubic resize to load_size 286 once, into a uint8 cache; then per
batch a random 256x256 crop, a random flip and the conversion to float32 in [-1, 1]) on real images, and
times ``TrainStream.batch`` directly and through ``TrainStream.iterate`` (the prefetching thread the
training loop uses). One training step consumes ``batch`` images of each domain; ``images_per_s`` counts
the images of one domain (steps/s x batch), ``images_per_s_both`` counts A and B together.

Usage::

  python -m benchmarks.input_pipeline                      # ../shared/datasets/horse2zebra-mini
  python -m benchmarks.input_pipeline --dataset folder:/path/to/horse2zebra --batch-sizes 1,8,32
  python -m benchmarks.input_pipeline --device             # also time jax.device_put of each batch

Prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from experiments.configs import horse2zebra
from jaxgan import input_pipeline

_MINI = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "horse2zebra-mini")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = f"folder:{os.path.normpath(_MINI)}" if os.path.isdir(_MINI) else "synthetic"
    parser.add_argument("--dataset", default=default, help="config.dataset (default: horse2zebra-mini if present)")
    parser.add_argument("--batch-sizes", default="1,8,16", help="comma-separated global batch sizes")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--load-size", type=int, default=286)
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--device", action="store_true", help="include jax.device_put + block_until_ready")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = horse2zebra.get_config()
    config.dataset = args.dataset
    config.load_size, config.crop_size = args.load_size, args.crop_size
    put = None
    if args.device:
        import jax

        def put(batch):
            return jax.block_until_ready(jax.device_put(batch))

    cpu = os.cpu_count()
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        config.batch_size = batch_size
        start = time.perf_counter()
        stream = input_pipeline.create_train_stream(config)
        build = time.perf_counter() - start
        decoded = sum(len(v) for v in stream.cached_indices.values())
        record = {
            "dataset": args.dataset,
            "load_size": args.load_size,
            "crop_size": args.crop_size,
            "batch": batch_size,
            "cpus": cpu,
            "load_avg_1min": load_avg,
            "cache_build_s": round(build, 3),
            "decode_images_per_s": round(decoded / build, 1),
        }
        for mode in ("batch", "iterate"):
            steps, step = 0, 0
            iterator = stream.iterate(0) if mode == "iterate" else None
            start = time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                batch = next(iterator) if iterator is not None else stream.batch(step)
                if put is not None:
                    put(batch)
                steps += 1
                step += 1
            elapsed = time.perf_counter() - start
            if iterator is not None:
                iterator.close()
            record[f"{mode}_steps_per_s"] = round(steps / elapsed, 1)
            record[f"{mode}_images_per_s"] = round(steps * batch_size / elapsed, 1)
            record[f"{mode}_images_per_s_both"] = round(2 * steps * batch_size / elapsed, 1)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
