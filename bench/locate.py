"""Benchmark: point → region lookup on the demo street (997 micro-grids plus buildings).

    .venv/bin/python bench/locate.py [--points 1000000] [--naive-points 1000000]

Prints build time, batch throughput of LocateIndex.locate_many against a naive loop over the
997 micro-grid polygons (shapely.contains_xy per polygon, vectorised over the points) and a
pure per-point loop (run on a small sample and extrapolated), and single-lookup latency.
Everything runs on one core: the thread pools of numpy's BLAS are pinned to one thread, and
the element-wise numpy and shapely calls used here are single-threaded anyway.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import shapely  # noqa: E402
from shapely.geometry import shape  # noqa: E402

from grassroots.demo.regions import build_demo_regions  # noqa: E402
from grassroots.kernel.regions.locate import LocateIndex, RegionRef, leaf_ids_of  # noqa: E402


def _demo() -> tuple[dict[int, RegionRef], dict[int, shapely.Geometry]]:
    data = build_demo_regions()
    ids = {f["properties"]["code"]: n for n, f in enumerate(data["features"], start=1)}
    refs, geoms = {}, {}
    for feature in data["features"]:
        p = feature["properties"]
        rid = ids[p["code"]]
        refs[rid] = RegionRef(rid, p["code"], p["name"], p["level"], ids.get(p["parent_code"]),
                              "")
        geoms[rid] = shape(feature["geometry"])
    return refs, geoms


def _best_of(runs: int, fn, *args):  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--naive-points", type=int, default=1_000_000,
                        help="points for the vectorised naive loop (extrapolated if fewer)")
    parser.add_argument("--per-point-sample", type=int, default=2_000)
    parser.add_argument("--latency-samples", type=int, default=20_000)
    parser.add_argument("--max-side", type=int, default=None)
    args = parser.parse_args()

    refs, geoms = _demo()
    leaves = leaf_ids_of(refs.values())
    micro_ids = [i for i in leaves if refs[i].level == "micro_grid"]
    street = next(geoms[i] for i, r in refs.items() if r.level == "street")
    options = {"max_side": args.max_side} if args.max_side else {}

    build_s, index = _best_of(3, lambda: LocateIndex(refs, [(i, geoms[i]) for i in leaves],
                                                     **options))
    rng = np.random.default_rng(20230415)
    x0, y0, x1, y1 = street.bounds
    lons = rng.uniform(x0, x1, args.points)
    lats = rng.uniform(y0, y1, args.points)

    batch_s, ids = _best_of(5, index.locate_many, lons, lats)
    leaves_s, _ = _best_of(5, index.locate_leaves, lons, lats)

    # Naive, vectorised over points: every micro-grid tests every point (no early exit).
    n_naive = min(args.naive_points, args.points)
    nx, ny = lons[:n_naive], lats[:n_naive]
    micro = [geoms[i] for i in micro_ids]

    def naive_vectorised() -> np.ndarray:
        out = np.full(n_naive, -1, dtype=np.int64)
        for rid, poly in zip(micro_ids, micro, strict=True):
            out[shapely.contains_xy(poly, nx, ny)] = rid
        return out

    naive_s, naive_ids = _best_of(1, naive_vectorised)
    naive_rate = n_naive / naive_s

    # Naive, per point in Python: stop at the first micro-grid that holds it.
    n_pp = args.per_point_sample

    def naive_per_point() -> list[int]:
        out = []
        for lon, lat in zip(lons[:n_pp].tolist(), lats[:n_pp].tolist(), strict=True):
            found = -1
            for rid, poly in zip(micro_ids, micro, strict=True):
                if shapely.contains_xy(poly, lon, lat):
                    found = rid
                    break
            out.append(found)
        return out

    pp_s, pp_ids = _best_of(1, naive_per_point)
    pp_rate = n_pp / pp_s

    # Agreement on micro-grid level (the naive loops ignore buildings): map each answer up.
    parent_micro = {i: (refs[i].parent_id if refs[i].level == "building" else i) for i in leaves}
    ours = np.array([parent_micro.get(int(i), -1) for i in ids[:n_naive]])
    agree = float(np.mean(ours == naive_ids))  # random points never land exactly on an edge
    agree_pp = float(np.mean(ours[:n_pp] == np.array(pp_ids)))

    samples = args.latency_samples
    lat_lons = rng.uniform(x0, x1, samples).tolist()
    lat_lats = rng.uniform(y0, y1, samples).tolist()
    for k in range(1000):  # warm up
        index.locate(lat_lons[k], lat_lats[k])
    timings = []
    for lon, lat in zip(lat_lons, lat_lats, strict=True):
        started = time.perf_counter_ns()
        index.locate(lon, lat)
        timings.append(time.perf_counter_ns() - started)
    timings.sort()
    p50 = statistics.median(timings) / 1000
    p99 = timings[int(0.99 * len(timings)) - 1] / 1000

    cells = index.width * index.height
    print(f"Locate benchmark — demo street, {len(micro_ids)} micro-grids + "
          f"{len(leaves) - len(micro_ids)} buildings; {platform.processor() or platform.machine()}"
          f", Python {platform.python_version()}, numpy {np.__version__}, "
          f"shapely {shapely.__version__} (GEOS {shapely.geos_version_string}), one core")
    print(f"raster {index.width}×{index.height} cells, {index.boundary_cell_count:,} boundary "
          f"cells ({index.boundary_cell_count / cells:.1%}), {index.raster.nbytes / 2**20:.1f} MiB")
    print()
    rows = [
        ("build LocateIndex (demo, best of 3)", f"{build_s:.3f} s", ""),
        (f"locate_many, {args.points:,} random points", f"{batch_s * 1000:.1f} ms",
         f"{args.points / batch_s:,.0f} points/s"),
        ("  (leaf indices only, no id lookup)", f"{leaves_s * 1000:.1f} ms",
         f"{args.points / leaves_s:,.0f} points/s"),
        (f"naive: contains_xy per micro-grid, vectorised, {n_naive:,} points",
         f"{naive_s:.2f} s", f"{naive_rate:,.0f} points/s"),
        (f"naive: per-point Python loop, {n_pp:,} points (extrapolated to "
         f"{args.points:,}: {args.points / pp_rate:,.0f} s)", f"{pp_s:.2f} s",
         f"{pp_rate:,.0f} points/s"),
        ("locate() single lookup, p50", f"{p50:.1f} µs", ""),
        ("locate() single lookup, p99", f"{p99:.1f} µs", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'time':>10}  {'throughput':>20}")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 20}")
    for name, value, rate in rows:
        print(f"{name:<{width}}  {value:>10}  {rate:>20}")
    print()
    naive_full_s = naive_s / n_naive * args.points
    print(f"speed-up over the vectorised naive loop: {naive_full_s / batch_s:,.0f}×;"
          f" over the per-point loop: {args.points / pp_rate / batch_s:,.0f}×")
    print(f"agreement with naive at micro-grid level: vectorised {agree:.6%}, "
          f"per-point {agree_pp:.4%} (tests check exactness against shapely)")


if __name__ == "__main__":
    main()
