"""ADCNN's claims in the emulated testbed (README.md). One command, several parts:

latency   adcnn vs neurosurgeon and aofl on het8 / eq8 (8 devices, 88 Mbit/s): simulated, and measured on
          a LocalCluster (8 worker processes at their cpu shares, shaped links), median of --repeat after
          warm-up requests (ADCNN's rates are learnt across requests, as the paper's running estimate)
digits    FDSP fine-tuning of the digits CNN (2x2 and 4x4, 4-bit in the loop): accuracy before/after vs the
          unpartitioned model; the fine-tuned adcnn plan's accuracy in process (codecs emulated) and on
          real workers (a sample of the test set) with its top-1 agreement
ratio     4-bit + RLE (and int8 / lz4 / zstd) compression ratio of the tensors adcnn plans move, on sample
          images, and the codec time they add (encode + decode per MB)
int8      EfficientNet-Lite0 (real weights): share of augmented sample images whose top-1 changes when an
          exact plan's transfers are int8, measured over real workers
distill   EfficientNet-Lite0 FDSP distillation (agreement before/after)

    python benchmarks/adcnn/bench.py                                  # all parts (long: see README)
    python benchmarks/adcnn/bench.py --parts latency --models vgg16 --clusters eq8 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: the digits part's fine-tuning epochs per grid (the default --epochs "12,60" for --grids 2x2,4x4)
EPOCHS_BY_GRID = {"2x2": 12, "4x4": 60}
DEFAULT_EPOCHS = "12,60"
RESULTS = Path(os.environ.get("ADCNN_RESULTS", HERE / "results.json"))  # parallel parts: one file each


def load() -> float:
    return round(os.getloadavg()[0], 1)


#: Benchmark-local clusters: ``het8s`` is het8's spread of speeds (1:3) scaled so that the eight shares
#: sum to 1.52 cores and fit on this 2-core machine next to the coordinator (het8 sums to 2.27);
#: ``eq9`` is the paper's central node + 8 workers at eq8's speed.
LOCAL_CLUSTERS: dict[str, dict[str, Any]] = {
    "het8s": {"source": "d0", "devices": [{"name": f"d{i}", "cpu_share": s} for i, s in
                                          enumerate([0.1, 0.12, 0.15, 0.18, 0.2, 0.22, 0.25, 0.3])],
              "network": {"bandwidth_mbps": 88, "latency_ms": 1.0}},
    # the paper's set-up: a central node (the source) and 8 workers, all alike (1.8 cores in all)
    "eq9": {"source": "d0", "devices": [{"name": f"d{i}", "cpu_share": 0.2} for i in range(9)],
            "network": {"bandwidth_mbps": 88, "latency_ms": 1.0}},
}


def get_cluster(name: str) -> Any:
    """A built-in cluster, a YAML path, or one of :data:`LOCAL_CLUSTERS`."""
    from coinfer.cluster import parse_cluster, resolve_cluster

    return parse_cluster(LOCAL_CLUSTERS[name]) if name in LOCAL_CLUSTERS else resolve_cluster(name)


def save(key: str, value: Any) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[key] = value
    RESULTS.write_text(json.dumps(data, indent=1))


# -- latency ---------------------------------------------------------------------------------------------
def part_latency(args: argparse.Namespace) -> None:
    import torch

    from coinfer import strategies
    from coinfer.cost.model import CostModel
    from coinfer.modelspec import capture_model
    from coinfer.runtime.coordinator import Session
    from coinfer.runtime.launcher import LocalCluster
    from coinfer.sim.run import simulate_lowered
    from coinfer.strategies import PlanRequest, run

    names = strategies.names()
    want = ["adcnn", "neurosurgeon", "aofl"]
    have = [s for s in want if s in names]
    print(f"strategies {have}; missing {[s for s in want if s not in names] or 'none'}", flush=True)
    rows = []
    for cname in args.clusters.split(","):
        cl = get_cluster(cname)
        lc = LocalCluster(cl, emulate_cpu=True).start() if args.measure else None
        try:
            for model in args.models.split(","):
                cm = capture_model(model)
                g = cm.graph
                costs = CostModel(g, cl)
                x = torch.randn(tuple(g.input_shape), generator=torch.Generator().manual_seed(0))
                row: dict[str, Any] = {"cluster": cname, "model": model, "load_start": load(), "plans": {}}
                for s in have:
                    res = run(s, PlanRequest(g, cl, model, costs))
                    plan = res.plan
                    r: dict[str, Any] = {"sim_ms": round(simulate_lowered(plan, g, costs).latency_ms, 2)}
                    if s == "adcnn":
                        r.update({k: res.info[k] for k in ("grid", "until", "head", "tail", "depth")})
                        r["wire"] = plan.wire.to_dict()
                    if lc is not None:
                        lat = []
                        with Session(plan, cl, lc.addresses, replan=False) as sess:
                            for _ in range(args.warmup):
                                sess(x)
                            for _ in range(args.repeat):
                                sess(x)
                                tr = sess.last_trace
                                lat.append(float(tr.meta["latency_ms"]))
                            tiles = [e.device for e in tr.events if e.lane == "compute" and "(tile)" in e.name]
                            moved = sum(int(e.args.get("bytes", 0)) for e in tr.events if e.lane == "send")
                        r.update({"measured_ms": round(statistics.median(lat), 1), "all_ms": [round(v) for v in lat],
                                  "bytes_sent_raw": moved})
                        if tiles:
                            r["tiles_per_device"] = {d: tiles.count(d) for d in sorted(set(tiles))}
                    row["plans"][s] = r
                    print(f"  {cname} {model} {s:<13} sim {r['sim_ms']:8.1f}"
                          + (f"  measured {r['measured_ms']:8.1f}" if "measured_ms" in r else ""), flush=True)
                for base in ("neurosurgeon", "aofl"):
                    if base in row["plans"] and "adcnn" in row["plans"]:
                        p = row["plans"]
                        row[f"speedup_vs_{base}_sim"] = round(p[base]["sim_ms"] / p["adcnn"]["sim_ms"], 3)
                        if "measured_ms" in p["adcnn"]:
                            row[f"speedup_vs_{base}_measured"] = round(p[base]["measured_ms"]
                                                                       / p["adcnn"]["measured_ms"], 3)
                row["load_end"] = load()
                rows.append(row)
                save("latency", rows)
        finally:
            if lc is not None:
                lc.stop()
    for base in ("neurosurgeon", "aofl"):
        for kind in ("sim", "measured"):
            v = [r[f"speedup_vs_{base}_{kind}"] for r in rows if f"speedup_vs_{base}_{kind}" in r]
            if v:
                print(f"adcnn vs {base} ({kind}): mean {statistics.mean(v):.2f}x  per case {v}")


# -- digits ----------------------------------------------------------------------------------------------
def part_digits(args: argparse.Namespace) -> None:
    import torch

    from coinfer.cluster import resolve_cluster
    from coinfer.cost.model import CostModel
    from coinfer.modelspec import capture_model
    from coinfer.plan.plan import Wire
    from coinfer.runtime.coordinator import Session
    from coinfer.runtime.launcher import LocalCluster
    from coinfer.strategies import PlanRequest, run
    from coinfer.train import fdsp

    out = []
    cl = resolve_cluster("het8")
    grids = args.grids.split(",")
    epochs = [int(v) for v in str(args.epochs).split(",")]
    if args.epochs == DEFAULT_EPOCHS:  # each grid's own budget (--grids 2x2 alone failed on "12,60")
        epochs = [EPOCHS_BY_GRID.get(g, EPOCHS_BY_GRID["2x2"]) for g in grids]
    elif len(epochs) == 1:
        epochs *= len(grids)
    elif len(epochs) != len(grids):
        raise SystemExit(f"--epochs {args.epochs}: give one value or one per grid ({len(grids)})")
    for grid, ep in zip(grids, epochs):
        g2 = tuple(int(v) for v in grid.split("x"))
        t0 = time.time()
        rep = fdsp.finetune_digits(g2, Wire("raw", "int4"), epochs=ep)  # type: ignore[arg-type]
        d = rep.to_dict()
        d["wall_s"] = round(time.time() - t0)
        d["epochs"] = ep
        # the fine-tuned model under a real adcnn plan: in process with the codecs, then on real workers
        cm = capture_model(rep.model_spec, fdsp.DIGITS_SHAPE)
        plan = run("adcnn", PlanRequest(cm.graph, cl, rep.model_spec, CostModel(cm.graph, cl),
                                        params={"grid": grid, "pool": "workers"})).plan
        _, _, xte, yte = fdsp.load_digits()
        emu = fdsp.WireExecutor(cm, plan)
        with torch.no_grad():
            ye = torch.cat([emu(xte[i:i + 64]) for i in range(0, len(xte), 64)])
            yp = torch.cat([cm.module(xte[i:i + 64]) for i in range(0, len(xte), 64)])
        d["plan_in_process"] = {"accuracy": float((ye.argmax(1) == yte).float().mean()),
                                "agreement_with_plain": float((ye.argmax(1) == yp.argmax(1)).float().mean()),
                                "images": len(yte)}
        n = args.digits_runtime_images
        if n:
            lc = LocalCluster(cl, emulate_cpu=True).start()
            try:
                with Session(plan, cl, lc.addresses, replan=False) as s:
                    yr = torch.cat([s(xte[i:i + 1]) for i in range(n)])
            finally:
                lc.stop()
            d["plan_on_workers"] = {"images": n, "accuracy": float((yr.argmax(1) == yte[:n]).float().mean()),
                                    "agreement_with_plain": float((yr.argmax(1) == yp[:n].argmax(1)).float().mean()),
                                    "same_as_in_process": float((yr.argmax(1) == ye[:n].argmax(1)).float().mean())}
        out.append(d)
        print(f"digits FDSP {grid} ({ep} epochs): unpartitioned {rep.unpartitioned:.4f}, before {rep.fdsp_before:.4f}, "
              f"after {rep.fdsp_after:.4f} ({(rep.fdsp_after - rep.unpartitioned) * 100:+.2f} points); "
              f"plan {d['plan_in_process']}" + (f"; workers {d.get('plan_on_workers')}" if n else ""), flush=True)
        save("digits", out)


# -- ratio -----------------------------------------------------------------------------------------------
def part_ratio(args: argparse.Namespace) -> None:
    """Bytes and codec time of the tensors an adcnn plan moves, on augmented sample images (in process).

    ``ratio``: raw float32 bytes / wire bytes over every message of the requests; ``codec_ms``: encode +
    decode per request on one full core of this machine (a device at cpu share s takes 1/s times as
    long); ``xfer_saved_ms``: transfer time the smaller messages save at ``--ratio-mbps`` (88, ADCNN's
    WiFi), summed over the messages (they share the source's link).
    """
    import torch

    from coinfer.cost.model import CostModel
    from coinfer.modelspec import capture_model
    from coinfer.strategies import PlanRequest, run
    from coinfer.train import fdsp

    cl = get_cluster("eq8")
    out = []
    for model in args.ratio_models.split(","):
        cm = capture_model(model)
        g = cm.graph
        size = g.input_shape[2]
        x = fdsp.augmented_set(args.ratio_images, size, seed=7)
        if g.input_shape[1] != 3:
            x = x[:, :1]
        row: dict[str, Any] = {"model": model, "images": args.ratio_images, "grid": args.ratio_grid,
                               "head": args.ratio_head, "wires": {}}
        for wire in ("raw", "int4", "int8", "lz4", "zstd", "int4+zstd"):
            plan = run("adcnn", PlanRequest(g, cl, model, CostModel(g, cl),
                                            params={"grid": args.ratio_grid, "wire": wire, "pool": "workers",
                                                    "head": args.ratio_head})).plan
            emu = fdsp.WireExecutor(cm, plan)
            with torch.no_grad():
                for i in range(len(x)):
                    emu(x[i:i + 1])
            st = emu.stats
            n = len(x)
            saved = (st["raw_bytes"] - st["wire_bytes"]) * 8 / (args.ratio_mbps * 1e3) / n
            row["wires"][wire] = {"ratio": round(st["raw_bytes"] / max(1, st["wire_bytes"]), 2),
                                  "messages_per_request": st["messages"] / n,
                                  "raw_MB_per_request": round(st["raw_bytes"] / 1e6 / n, 3),
                                  "wire_MB_per_request": round(st["wire_bytes"] / 1e6 / n, 3),
                                  "encode_ms_per_request": round(st["encode_ms"] / n, 2),
                                  "decode_ms_per_request": round(st["decode_ms"] / n, 2),
                                  "codec_ms_per_raw_MB": round((st["encode_ms"] + st["decode_ms"])
                                                               / max(1e-9, st["raw_bytes"] / 1e6), 2),
                                  "xfer_saved_ms_per_request": round(saved, 1)}
        out.append(row)
        print(f"ratio {model} ({args.ratio_grid}, head {args.ratio_head}): " + ", ".join(
            f"{w} {v['ratio']}x codec {v['encode_ms_per_request'] + v['decode_ms_per_request']:.1f} ms "
            f"saves {v['xfer_saved_ms_per_request']} ms" for w, v in row["wires"].items()), flush=True)
        save("ratio", out)


# -- int8 ------------------------------------------------------------------------------------------------
def part_int8(args: argparse.Namespace) -> None:
    import torch

    from coinfer.cluster import parse_cluster
    from coinfer.cost.model import CostModel
    from coinfer.modelspec import capture_model
    from coinfer.plan.plan import Wire
    from coinfer.runtime.coordinator import Session
    from coinfer.runtime.launcher import LocalCluster
    from coinfer.strategies import PlanRequest, run
    from coinfer.train import fdsp

    cm = capture_model("efficientnet_lite0")
    g = cm.graph
    n = args.int8_images
    x, ref = _int8_images(cm, n)
    # an exact plan (rows with exact halos over 4 devices, several stages) whose every transfer is int8
    cl = parse_cluster({"source": "d0", "devices": [{"name": f"d{i}", "cpu_share": 1.0} for i in range(4)],
                        "network": {"bandwidth_mbps": 1000, "latency_ms": 0, "shape": False}})
    plan = run("proportional", PlanRequest(g, cl, "efficientnet_lite0", CostModel(g, cl))).plan
    quants = args.int8_quant.split(",")
    res: dict[str, Any] = {"images": n, "stages": len(plan.stages), "plan": "proportional rows, exact"}
    lc = LocalCluster(cl, emulate_cpu=False).start()
    t0 = time.time()
    try:
        for q in quants:  # every transfer of the plan quantised with q (results return raw)
            plan.wire = Wire("raw", q)
            with Session(plan, cl, lc.addresses, replan=False) as s:
                ys = []
                for i in range(n):
                    ys.append(s(x[i:i + 1]))
                moved = sum(int(e.args.get("bytes", 0)) for e in s.last_trace.events if e.lane == "send")
            changed = int((torch.cat(ys).argmax(1) != ref).sum())
            res[q] = {"changed": changed, "share": round(changed / n, 4), "bytes_per_request": moved}
            print(f"{q}: top-1 changed on {changed}/{n} augmented images ({100 * changed / n:.2f}%) over real "
                  f"workers, {len(plan.stages)} stages, {moved} bytes sent per request", flush=True)
    finally:
        lc.stop()
    res["wall_s"] = round(time.time() - t0)
    # and the same for the adcnn FDSP plan: quantised vs its own lossless result (in process, codecs emulated)
    from coinfer.cluster import resolve_cluster

    cl8 = resolve_cluster("het8")
    outs = {}
    for wire in ("raw", *quants):
        p = run("adcnn", PlanRequest(g, cl8, "efficientnet_lite0", CostModel(g, cl8),
                                     params={"grid": "2x2", "wire": wire, "pool": "workers", "head": "auto"})).plan
        emu = fdsp.WireExecutor(cm, p)
        with torch.no_grad():
            outs[wire] = torch.cat([emu(x[i:i + 8]) for i in range(0, n, 8)]).argmax(1)
    for q in quants:
        res[q]["adcnn_2x2_vs_raw_changed_share"] = round(float((outs[q] != outs["raw"]).float().mean()), 4)
        print(f"adcnn 2x2 {q} vs raw: {res[q]['adcnn_2x2_vs_raw_changed_share'] * 100:.2f}%", flush=True)
    res["adcnn_2x2_raw_agreement_with_plain"] = round(float((outs["raw"] == ref).float().mean()), 4)
    save("int8", res)


def part_int8cuts(args: argparse.Namespace) -> None:
    """int8 over one link: EfficientNet-Lite0 split once at a cut point (source -> d1 int8-coded, the tail
    on d1, its result back unquantised as in the runtime), in process with the real codecs; share of changed
    top-1 per cut and quantisation."""
    import torch

    from coinfer.modelspec import capture_model
    from coinfer.plan.plan import Plan
    from coinfer.train import fdsp

    cm = capture_model("efficientnet_lite0")
    g = cm.graph
    n = args.int8_images
    x, ref = _int8_images(cm, n)
    out = []
    for q in args.int8_quant.split(","):
        for cut in args.int8_cuts.split(","):
            emu = fdsp.WireExecutor(cm, Plan.from_json(_two_stage_json(g, cut, q)))
            with torch.no_grad():
                top = torch.cat([emu(x[i:i + 8]) for i in range(0, n, 8)]).argmax(1)
            changed = int((top != ref).sum())
            out.append({"quant": q, "cut": cut, "shape": list(g[cut].shape), "images": n, "changed": changed,
                        "share": round(changed / n, 4), "messages_per_image": emu.stats["messages"] / n})
            print(f"{q} at {cut} {list(g[cut].shape)}: top-1 changed on {changed}/{n}", flush=True)
            save("int8cuts", out)


def _int8_images(cm, n: int):  # type: ignore[no-untyped-def]
    """The augmented sample images (1/8 held-out) and the unpartitioned model's top-1 on them."""
    import torch

    from coinfer.train import fdsp

    x = torch.cat([fdsp.augmented_set(n - n // 8, 224, seed=11),
                   fdsp.augmented_set(n // 8, 224, seed=12, names=fdsp.HELDOUT_IMAGES)])
    with torch.no_grad():
        ref = torch.cat([cm.module(x[i:i + 16]) for i in range(0, n, 16)]).argmax(1)
    return x, ref


def _two_stage_json(g: Any, cut: str, quant: str = "int8") -> str:
    """A plan: d0 computes up to ``cut``, d1 the rest (its output returns to d0)."""
    return json.dumps({"format": "coinfer.plan/1",
                       "model": {"name": "efficientnet_lite0", "input_shape": list(g.input_shape),
                                 "fingerprint": g.fingerprint()},
                       "devices": ["d0", "d1"], "source": "d0", "strategy": {"name": "manual", "params": {}},
                       "stages": [{"until": cut, "partition": {"type": "whole", "device": "d0"}},
                                  {"until": "output", "partition": {"type": "whole", "device": "d1"}}],
                       "exit": None, "wire": {"codec": "raw", "quant": quant}, "predicted": None})


# -- distill ---------------------------------------------------------------------------------------------
def part_distill(args: argparse.Namespace) -> None:
    from coinfer.plan.plan import Wire
    from coinfer.train import fdsp

    out = []
    for spec in args.distill.split(","):
        grid, _, until = spec.partition("@")
        g2 = tuple(int(v) for v in grid.split("x"))
        t0 = time.time()
        rep = fdsp.distill("efficientnet_lite0", g2, Wire("raw", "int4"), steps=args.distill_steps,  # type: ignore[arg-type]
                           batch=args.distill_batch, eval_images=args.distill_eval, until=until or None,
                           lr=args.distill_lr)
        d = rep.to_dict()
        d["wall_s"] = round(time.time() - t0)
        d["load"] = load()
        out.append(d)
        print(f"distill efficientnet_lite0 {grid} until {rep.until}: agreement before {rep.fdsp_before:.3f}, "
              f"after {rep.fdsp_after:.3f} ({rep.train_steps} steps, {rep.train_s:.0f} s)", flush=True)
        save("distill", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="latency,digits,ratio,int8,distill")
    ap.add_argument("--clusters", default="eq8,het8s")
    ap.add_argument("--models", default="vgg16,resnet18,yolov2_tiny")
    ap.add_argument("--measure", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--grids", default="2x2,4x4", help="digits FDSP grids")
    ap.add_argument("--epochs", default=DEFAULT_EPOCHS,
                    help="digits fine-tuning epochs, one per grid (a single value: every grid)")
    ap.add_argument("--digits-runtime-images", type=int, default=40)
    ap.add_argument("--ratio-models", default="vgg16,resnet18,yolov2_tiny,efficientnet_lite0")
    ap.add_argument("--ratio-images", type=int, default=4)
    ap.add_argument("--ratio-grid", default="4x4")
    ap.add_argument("--ratio-head", default="auto", help="adcnn head for the ratio part: auto (input) or act")
    ap.add_argument("--ratio-mbps", type=float, default=88.0)
    ap.add_argument("--int8-images", type=int, default=200)
    ap.add_argument("--int8-quant", default="int8,int8c", help="int8 parts: quantisations to compare")
    ap.add_argument("--int8-cuts", default="_swish,add,add_1,add_3,add_5,add_8,_swish_1")
    ap.add_argument("--distill", default="2x2", help="grid[@until],...")
    ap.add_argument("--distill-steps", type=int, default=100)
    ap.add_argument("--distill-batch", type=int, default=8)
    ap.add_argument("--distill-eval", type=int, default=64)
    ap.add_argument("--distill-lr", type=float, default=2e-5)
    args = ap.parse_args()
    parts = {"latency": part_latency, "digits": part_digits, "ratio": part_ratio, "int8": part_int8,
             "int8cuts": part_int8cuts, "distill": part_distill}
    bad = [p for p in args.parts.split(",") if p not in parts]
    if bad:
        ap.error(f"--parts: unknown {', '.join(bad)}; choose from {', '.join(parts)}")
    if args.int8_images < 8:
        ap.error("--int8-images must be >= 8 (one eighth of them are the held-out images)")
    import torch

    torch.set_num_threads(1)
    print(f"load average {load()}", flush=True)
    for part in args.parts.split(","):
        t0 = time.time()
        parts[part](args)
        print(f"[{part}: {time.time() - t0:.0f} s, load {load()}]", flush=True)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
