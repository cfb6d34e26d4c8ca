#!/usr/bin/env python3
"""The results report (issue 23): runs every section's `host` commands, caches their outputs,
and renders each section's table.

    report.py --host H --data D --cache C --out DIR [--quick] [--sections 1,2,...] [--plan]

Full mode renders the tables between `<!-- results:NAME:begin -->` and `end` markers of
docs/results.md (the prose around them is written by hand from the numbers). Quick mode runs
every section at tiny sizes into --out and renders there, never touching docs/.

Caching: each job is a `host` command; its outputs go to CACHE/<job>-<key>/ where key is the
sha256 of the command line and of what decides its numbers: the bundled models it names and the frozen
judge (models/*.safetensors), the inference arithmetic (the pins of host/tests/main_job_pin.rs:
the main-job pin for network runs, the closed-form pin for runs of closed-form denoisers) and
REPORT_VERSION (bump it when an evaluation command's or a closed-form denoiser's own code
changes). So the cache survives rebuilds across
sessions, and a job runs into a `.partial` folder renamed when it succeeds: an interrupted
report resumes at the first unfinished job and never reads half-written outputs.

Sharding: a job of more than SHARD_EVALS network evaluations runs as `--shard i/N` pieces
(`host sample` splits its chains, `evaluate restoration` and `evaluate posterior` their
digits) that are kept in the
`.partial` folder as each finishes, then `host merge` joins them into exactly the single
run's outputs (bit for bit). So a job of hours resumes within a session's budget, losing at
most one shard when it is stopped.

Records: a cache lives on one machine, but the report takes more hours than a session has, on
machines that start empty. So with --records DIR (full mode: docs/results-data) each finished
job's small outputs — what the tables and figures read, never the samples themselves — are
kept in DIR/<job>-<key>/, and a digits job's finished shards (a few kB each) in
DIR/<job>-<key>.partial/ until it completes. A job whose record has the current key counts as
done; a record with another key is stale and removed when its job finishes again. `--fresh`
(results.sh --fresh) ignores the records and reruns everything from the command alone.

Only the standard library: CI machines have python3, nothing else is installed for this.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Bump when `host evaluate …` code changes what a cached job would report.
REPORT_VERSION = 1

# Network evaluations per second of the bundled 1.2 M-parameter models on 2 cores at the
# default batch of 32 before any job has finished (`host sample`, 32 chains, K = 50: 345/s,
# and `evaluate restoration` the same, on a quiet EPYC, 2026-12-07); once jobs finish, the
# estimate uses their measured rate. For the time estimates only.
EVALS_PER_SECOND = 345.0

# The closed-form denoisers of section 2 in network-equivalent evaluations (the estimates
# and the sharding count in those): measured at n = 1000, K = 100 beside other jobs, the
# class mixture took 1.7x the time of as many network evaluations; the training set took 8.7x
# before its distance kernels got AVX2 twins, 1.6x after (64 chains, K = 20: 6.8 s vs 4.3 s).
MIXTURE_COST = 2
TRAINING_SET_COST = 2
# `evaluate posterior` runs the gaussian-fit chains beside the network's: its 100-digit
# vp-inpaint job took 66 min for 600k network evaluations (2.3x, beside other work).
POSTERIOR_COST = 2

# Jobs over test digits, whose shards are small (per-digit JSON) and recorded as they finish.
DIGITS_JOBS = ("restoration", "posterior")

# Largest job run in one piece: about 12 minutes of evaluations at that rate.
SHARD_EVALS = 250_000


class Job:
    """One `host` command whose outputs land in a cached folder."""

    def __init__(self, name, argv, evals, kind, shards=None):
        self.name = name  # unique, file-name safe
        self.argv = argv  # without the binary; "{out}" stands for the job's folder
        self.evals = evals  # network evaluations (estimate)
        self.kind = kind  # "sample", "restoration", "posterior"
        # Pieces to run it in; not part of the key: the merged outputs are those of the
        # single run.
        if shards is None:
            shards = -(-evals // SHARD_EVALS)
        self.shards = max(1, shards)

    def shard_argv(self, i, parts):
        """The command of shard i: its own --out folder under `parts`."""
        argv = list(self.argv)
        at = argv.index("--out")
        argv[at + 1] = f"{parts}/{i}"
        return argv + ["--shard", f"{i}/{self.shards}"]

    def merged_out(self):
        """Where `host merge` writes: the single run's --out (sample: a folder), or for the
        JSON table of a digits job the folder `{out}/merged` (merge prints the table)."""
        out = self.argv[self.argv.index("--out") + 1]
        return out if self.kind == "sample" else "{out}/merged"

    def key(self, repo):
        text = json.dumps([self.argv, identity(repo, self.argv)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity(repo, argv):
    """What decides a cached job's numbers besides its command (see the module doc): the
    judge, every bundled model the command names, REPORT_VERSION and the pins of
    host/tests/main_job_pin.rs: a run of a bundled network keys on the main-job pins (its
    weights and the network arithmetic), a run of a closed-form denoiser on the closed-form
    pin only (the sampler's arithmetic), so retraining a model keeps the closed-form rows."""
    h = hashlib.sha256(f"report {REPORT_VERSION}\n".encode())
    named = [a[len("bundled:"):] for a in argv if a.startswith("bundled:")]
    for name in ["mnist-classifier"] + named:
        h.update(name.encode() + b"\0" + (repo / "models" / f"{name}.safetensors").read_bytes())
    text = (repo / "host" / "tests" / "main_job_pin.rs").read_text()
    pins = dict(re.findall(r'const (\w+)_SHA256: &str = "([0-9a-f]{64})"', text))
    if set(pins) != {"MAIN_JOB", "DIRECT", "CLOSED_FORM"}:
        raise SystemExit(f"error: main_job_pin.rs pins {sorted(pins)}, expected MAIN_JOB, "
                         "DIRECT and CLOSED_FORM")
    keys = ["MAIN_JOB", "DIRECT"] if named else ["CLOSED_FORM"]
    h.update("".join(pins[k] for k in keys).encode())
    return h.hexdigest()


class Runner:
    def __init__(self, host, cache, repo, dry, records=None, plan_only=False):
        self.host, self.cache, self.repo, self.dry = host, Path(cache), repo, dry
        self.records = Path(records) if records else None
        self.plan_only = plan_only  # dry and writes nothing (dry alone may still record)

    def cached(self, job):
        return self.cache / f"{job.name}-{job.key(self.repo)}"

    def record(self, job):
        """The job's record folder, or None without --records."""
        return self.records / self.cached(job).name if self.records else None

    def folder(self, job):
        """Where a finished job's outputs are read: the cache, else its record."""
        done = self.cached(job)
        record = self.record(job)
        if not (done / "done").exists() and record and (record / "done").exists():
            return record
        return done

    def shards_done(self, job):
        """Finished shards of a sharded job (in its `.partial` folder or its record's)."""
        if (self.folder(job) / "done").exists():
            return job.shards
        parts = [self.partial(job) / "parts"]
        if self.record(job):
            parts.append(partial_of(self.record(job)) / "parts")
        return sum(any((p / f"{i}.done").exists() for p in parts) for i in range(job.shards))

    def partial(self, job):
        return partial_of(self.cached(job))

    def restore_shards(self, job, parts):
        """Copies the record's finished shards of `job` into the cache's `parts`; returns
        their indices."""
        if not self.record(job) or job.kind not in DIGITS_JOBS:
            return []
        kept = partial_of(self.record(job)) / "parts"
        restored = []
        for i in range(job.shards):
            if (kept / f"{i}.done").exists() and not (parts / f"{i}.done").exists():
                if (parts / str(i)).exists():
                    shutil.rmtree(parts / str(i))
                shutil.copytree(kept / str(i), parts / str(i))
                shutil.copy2(kept / f"{i}.done", parts / f"{i}.done")
                restored.append(i)
        return restored

    def forget_shards(self, job, parts, indices):
        """Removes shards `indices` of `job` from the cache's `parts` and from its record."""
        kept = partial_of(self.record(job)) / "parts" if self.record(job) else None
        for folder in [parts] + ([kept] if kept else []):
            for i in indices:
                if (folder / str(i)).exists():
                    shutil.rmtree(folder / str(i))
                (folder / f"{i}.done").unlink(missing_ok=True)

    def keep_shard(self, job, parts, i):
        """Records a digits job's finished shard i (small: per-digit JSON)."""
        if not self.record(job) or job.kind not in DIGITS_JOBS:
            return
        kept = partial_of(self.record(job)) / "parts"
        kept.mkdir(parents=True, exist_ok=True)
        if (kept / str(i)).exists():
            shutil.rmtree(kept / str(i))
        shutil.copytree(parts / str(i), kept / str(i))
        shutil.copy2(parts / f"{i}.done", kept / f"{i}.done")

    def keep(self, job, done):
        """Records what the tables read of a finished job; removes its stale records."""
        record = self.record(job)
        if not record:
            return
        for old in self.records.glob(f"{job.name}-*"):
            if old.name in (record.name, partial_of(record).name) or \
                    not re.fullmatch(re.escape(job.name) + r"-[0-9a-f]{16}(\.partial)?", old.name):
                continue
            shutil.rmtree(old)
        tmp = record.with_name(record.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        for f in sorted(done.rglob("*")):
            rel = f.relative_to(done)
            if f.is_dir() or rel.parts[0] == "parts" or (
                    rel.parts[0] == "samples" and rel.name != "run.json"):
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, tmp / rel)
        if record.exists():
            shutil.rmtree(record)
        tmp.rename(record)
        if partial_of(record).exists():
            shutil.rmtree(partial_of(record))

    def command(self, argv, partial, log):
        cmd = [self.host] + [a.replace("{out}", str(partial)) for a in argv]
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        with open(log, "wb") as stdout:
            subprocess.run(cmd, check=True, stdout=stdout)

    def run_shards(self, job, partial):
        """Runs the shards not yet finished, then merges them; returns their seconds."""
        parts = partial / "parts"
        parts.mkdir(exist_ok=True)
        restored = self.restore_shards(job, parts)
        seconds = 0.0
        for i in range(job.shards):
            mark = parts / f"{i}.done"
            if not mark.exists():
                if (parts / str(i)).exists():
                    shutil.rmtree(parts / str(i))
                t = time.time()
                self.command(job.shard_argv(i, "{out}/parts"), partial, parts / f"{i}.md")
                mark.write_text(json.dumps({"seconds": time.time() - t}))
                self.keep_shard(job, parts, i)
            seconds += json.loads(mark.read_text())["seconds"]
        merge = ["merge", "--quiet", "--out", job.merged_out()]
        try:
            self.command(merge + [f"{{out}}/parts/{i}" for i in range(job.shards)], partial,
                         partial / "stdout-0.md")
        except subprocess.CalledProcessError:
            if not restored:
                raise
            # Shards recorded on another machine may be foreign here (another bit class: the
            # network's arithmetic differs by ISA): rerun them on this one.
            print(f"results: {job.name}: the recorded shards {restored} do not merge with "
                  "this machine's; rerunning them", file=sys.stderr, flush=True)
            self.forget_shards(job, parts, restored)
            return self.run_shards(job, partial)
        return seconds

    def run(self, job, then=()):
        """Runs `job` (and the follow-up commands `then`, same folder) unless cached."""
        done = self.cached(job)
        record = self.record(job)
        if (done / "done").exists():
            if record and not (record / "done").exists() and not self.plan_only:
                self.keep(job, done)  # finished by a run without --records
            return done
        if (self.folder(job) / "done").exists():
            return self.folder(job)
        if self.dry:
            return None
        partial = self.partial(job)
        if partial.exists():
            # Keep only the finished shards of a sharded job: a merge or a follow-up that was
            # interrupted left outputs its rerun must not meet.
            for child in partial.iterdir():
                if job.shards > 1 and child.name == "parts":
                    continue
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        partial.mkdir(parents=True, exist_ok=True)
        seconds = self.run_shards(job, partial) if job.shards > 1 else 0.0
        t = time.time()
        first = 1 if job.shards > 1 else 0
        for i, argv in enumerate([job.argv, *then][first:], start=first):
            self.command(argv, partial, partial / f"stdout-{i}.md")
        (partial / "command.json").write_text(json.dumps(
            {"argv": [job.argv, *then], "shards": job.shards,
             "seconds": seconds + time.time() - t}, indent=1))
        (partial / "done").write_text("")
        if done.exists():
            shutil.rmtree(done)
        partial.rename(done)
        self.keep(job, done)
        return done


def partial_of(folder):
    return folder.with_name(folder.name + ".partial")


def sample_job(name, flags, n, evals_per_chain, data, shards=None):
    """`host sample` into {out}/samples, then FID and the nearest-training check."""
    job = Job(name, ["sample", *flags, "--n", str(n), "--seed", "0", "--quiet",
                     "--out", "{out}/samples"], n * evals_per_chain, "sample", shards)
    then = [
        ["evaluate", "fid", "--samples", "{out}/samples", "--n", str(n), "--out",
         "{out}/fid.json"],
        ["evaluate", "nearest", "--samples", "{out}/samples/samples.safetensors", "--data",
         data, "--out", "{out}/nearest.json"],
    ]
    return job, then


def sections(quick, data):
    """Every section's rows: (section, row label, job, follow-ups, the flags shown)."""
    n = 16 if quick else 1000
    k = (lambda full: 4 if quick else full)
    vp = ["--weights", "bundled:mnist-vp"]
    ve = ["--weights", "bundled:mnist-ve"]
    rows = []

    def add(section, label, name, flags, evals_per_chain, shards=None):
        job, then = sample_job(f"s{section}-{name}", flags, n, evals_per_chain, data, shards)
        rows.append((section, label, job, then, flags))

    # 1. Schedules at equal and at the paper's cost. (--quick shards this row as the full
    # run does, so that CI runs the shard-and-merge path.)
    add(1, "pretrained, K = 1000 (paper's c, T0)", "pretrained-1000",
        vp + ["--preset", "vp-uncond-pretrained", "--steps", str(k(1000))], k(1000),
        2 if quick else None)
    for steps in (100, 30):
        for schedule in ("sigmoid", "linear", "geometric", "karras"):
            add(1, f"{schedule}, K = {steps}", f"{schedule}-{steps}",
                vp + ["--preset", "vp-uncond-sigmoid", "--schedule", schedule,
                      "--steps", str(k(steps))], k(steps))
    # 2. Temperature (T_k linear from T0 to 1: T0 = 1 is the constant T = 1).
    for t0 in ("0.1", "0.3", "0.5", "0.7", "1"):
        add(2, f"network, T0 = {t0}", f"t0-{t0}",
            vp + ["--preset", "vp-uncond-sigmoid", "--t0", t0, "--steps", str(k(100))],
            k(100))
    for t0 in ("0.1", "0.3", "0.5", "1"):
        add(2, f"class-Gaussian mixture (exact), T0 = {t0}", f"mixture-t0-{t0}",
            ["--weights", f"gaussian-mixture-fit:{data}", "--preset", "vp-uncond-sigmoid",
             "--t0", t0, "--steps", str(k(100))], MIXTURE_COST * k(100))
    # The exact denoiser of the 60,000 training digits: the same preset with a perfect fit.
    for t0 in ("0.1", "0.3", "0.5", "1"):
        add(2, f"training set (exact, perfect fit), T0 = {t0}", f"training-set-t0-{t0}",
            ["--weights", f"training-set:{data}", "--preset", "vp-uncond-sigmoid",
             "--t0", t0, "--steps", str(k(100))], TRAINING_SET_COST * k(100))
    # 3. VP vs VE networks and the classic instances.
    add(3, "VP network, vp-uncond-sigmoid", "vp-sigmoid",
        vp + ["--preset", "vp-uncond-sigmoid", "--steps", str(k(100))], k(100))
    add(3, "VE network, ve-uncond", "ve-uncond",
        ve + ["--preset", "ve-uncond", "--steps", str(k(1000))], k(1000))
    # DDPM is always K = 1000: --quick runs it with the cheap exact Gaussian denoiser.
    ddpm_weights = ["--weights", f"gaussian-fit:{data}"] if quick else vp
    for var in ("beta", "beta-tilde"):
        add(3, f"DDPM (VP), K = 1000, variance {var}", f"ddpm-{var}",
            ddpm_weights + ["--sampler", "ddpm", "--ddpm-variance", var], 0 if quick else 1000)
    add(3, "NCSN (VE), L = 10, T = 100, eps = 2e-5", "ncsn",
        ve + ["--sampler", "ncsn", "--ncsn-levels", "10", "--steps-per-level",
              str(2 if quick else 100), "--ncsn-eps", "2e-5"], 20 if quick else 1000)
    add(3, "VE predictor-corrector (VE)", "ve-pc",
        ve + ["--sampler", "ve-pc", "--steps", str(k(1000))], 2 * k(1000))
    return rows


def restoration_rows(quick, data):
    """Section 4: the paper's inverse-problem presets on test digits."""
    count, samples = (2, 4) if quick else (100, 32)
    rows = []
    for preset, task, weights, steps in (
        ("vp-inpaint", "inpaint", "bundled:mnist-vp", 750),
        ("vp-sr4", "sr4", "bundled:mnist-vp", 750),
        ("ve-inpaint", "inpaint", "bundled:mnist-ve", 1000),
        ("ve-sr4", "sr4", "bundled:mnist-ve", 1000),
    ):
        k = 4 if quick else steps
        flags = ["--weights", weights, "--preset", preset, "--task", task, "--sigma-y", "0.2",
                 "--steps", str(k), "--count", str(count), "--samples", str(samples)]
        job = Job(f"s4-{preset}", ["evaluate", "restoration", *flags, "--data", data,
                                   "--seed", "0", "--quiet", "--out", "{out}/table.json"],
                  count * samples * k, "restoration", 2 if quick else None)
        rows.append((4, preset, job, [], flags))
    return rows


def posterior_rows(quick, data):
    """Section 5: gaussian-fit against the closed-form posterior, then the network."""
    count, samples = (2, 4) if quick else (100, 8)
    rows = []
    # The presets, then the two fixes of inpainting's cold start that section 5 measures.
    for preset, task, label, name, extra in (
        ("vp-inpaint", "inpaint", "vp-inpaint", "", []),
        ("vp-sr4", "sr4", "vp-sr4", "", []),
        ("vp-inpaint", "inpaint", "vp-inpaint, annealed σ_y", "-annealed",
         ["--step-rule", "annealed"]),
        ("vp-inpaint", "inpaint", "vp-inpaint, warm start from the Gaussian MMSE",
         "-warm-start", ["--start", "gaussian-mmse"]),
    ):
        k = 8 if quick else 750
        flags = ["--preset", preset, "--task", task, "--steps", str(k), "--count", str(count),
                 "--samples", str(samples), *extra]
        job = Job(f"s5-{preset}{name}", ["evaluate", "posterior", *flags, "--data", data,
                                         "--quiet", "--out", "{out}/posterior.json"],
                  POSTERIOR_COST * count * samples * k, "posterior", 2 if quick else None)
        rows.append((5, label, job, [], flags))
    return rows


def cost_rows(quick, data):
    """Section 6: each denoiser's time per evaluation, from a short `host sample` alone on the
    machine (the rows of sections 1-3 time themselves too, beside whatever else ran)."""
    n, k = (4, 2) if quick else (64, 20)
    rows = []
    for label, name, weights, preset, cost in (
        ("VP network", "vp-network", "bundled:mnist-vp", "vp-uncond-sigmoid", 1),
        ("VE network", "ve-network", "bundled:mnist-ve", "ve-uncond", 1),
        ("class-Gaussian mixture (exact)", "mixture", f"gaussian-mixture-fit:{data}",
         "vp-uncond-sigmoid", MIXTURE_COST),
        ("training set (exact)", "training-set", f"training-set:{data}", "vp-uncond-sigmoid",
         TRAINING_SET_COST),
    ):
        flags = ["--weights", weights, "--preset", preset, "--steps", str(k)]
        job = Job(f"s6-{name}", ["sample", *flags, "--n", str(n), "--seed", "0", "--quiet",
                                 "--out", "{out}/samples"], cost * n * k, "sample", 1)
        rows.append((6, label, job, [], flags))
    return rows


def table_cost(rows, runner):
    out = ["| denoiser | flags | evaluations (chains × steps) | sampling s | ms per evaluation "
           "| × VP network |", "|" + "---|" * 6]
    per_eval = {}
    for _, label, job, _, flags in rows:
        d = runner.folder(job)
        if (d / "done").exists():
            t = json.loads((d / "samples" / "run.json").read_text()).get("timings", {})
            secs, evals = t.get("sampling_s"), t.get("denoiser_evaluations")
            if secs and evals:  # a single piece (one shard) that ran something
                per_eval[job.name] = (secs, evals)
    base = per_eval.get("s6-vp-network")
    for _, label, job, _, flags in rows:
        if job.name not in per_eval:
            out.append(f"| {label} | `{' '.join(flags)}` | not run | | | |")
            continue
        secs, evals = per_eval[job.name]
        ratio = fmt(secs / evals / (base[0] / base[1])) if base else "–"
        out.append(f"| {label} | `{' '.join(flags)}` | {evals:.0f} | {secs:.2f} "
                   f"| {1000 * secs / evals:.2f} | {ratio} |")
    return "\n".join(out)


def fmt(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}"


def table_samples(rows, runner):
    out = ["| row | flags | FID (n) | classes 0 … 9 | χ² (p) | diversity (samples / real) "
           "| nearest-training distance, median | NFE per sample | s per sample |",
           "|" + "---|" * 9]
    for _, label, job, _, flags in rows:
        d = runner.folder(job)
        if not (d / "done").exists():
            out.append(f"| {label} | `{' '.join(flags)}` | not run | | | | | | |")
            continue
        fid = json.loads((d / "fid.json").read_text())["scores"]
        near = json.loads((d / "nearest.json").read_text())
        t = sample_timings(json.loads((d / "samples" / "run.json").read_text()))
        n = fid["n"]
        cb = fid.get("class_balance") or {}
        div = fid.get("diversity") or {}
        out.append(
            f"| {label} | `{' '.join(flags)}` | {fmt(fid['fid'])} ({n}) "
            f"| {' '.join(str(c) for c in fid['class_counts'])} "
            f"| {fmt(cb.get('chi2'), 1)} ({fmt(cb.get('p'), 3)}) "
            f"| {fmt(div.get('samples'), 3)} / {fmt(div.get('real'), 3)} "
            f"| {fmt(near['sample_distance']['median'])} "
            f"| {t['denoiser_evaluations'] / n:.0f} | {t['total_s'] / n:.3f} |")
    return "\n".join(out)


def sample_timings(run):
    """A run's timings; a merged run's are the sums over its shards."""
    if "shards" not in run:
        return run["timings"]
    keys = ("denoiser_evaluations", "total_s")
    return {k: sum(s["timings"][k] for s in run["shards"]) for k in keys}


def restoration_table(d):
    """The table.json of a restoration job: its --out, or the merge of its shards."""
    single = d / "table.json"
    return single if single.exists() else d / "merged" / "table.json"


def evals_per_second(jobs, runner):
    """The rate measured on the finished jobs (their evaluations over their seconds, the
    follow-up FID and nearest-neighbour checks included), else EVALS_PER_SECOND."""
    evals = seconds = 0.0
    for job in jobs:
        record = runner.folder(job) / "command.json"
        if job.evals > 0 and record.exists():
            evals += job.evals
            seconds += json.loads(record.read_text())["seconds"]
    return evals / seconds if evals > 0 and seconds > 0 else EVALS_PER_SECOND


def table_restoration(rows, runner):
    out = ["| preset | flags | back-projection | Gaussian MMSE | one sample | mean of samples "
           "| s per digit |", "|" + "---|" * 7]
    for _, label, job, _, flags in rows:
        d = runner.folder(job)
        if not (d / "done").exists():
            out.append(f"| {label} | `{' '.join(flags)}` | not run | | | | |")
            continue
        t = json.loads(restoration_table(d).read_text())
        m = {x["name"]: x for x in t["methods"]}
        cell = lambda k: (f"{m[k]['mean']:.2f} ± {m[k]['se']:.2f} dB, "
                          f"SSIM {m[k]['ssim_mean']:.3f} ± {m[k]['ssim_se']:.3f}")
        secs = json.loads((d / "command.json").read_text())["seconds"] / len(t["digits"])
        out.append(f"| {label} | `{' '.join(flags)}` | {cell('back_projection')} "
                   f"| {cell('gaussian_mmse')} | {cell('sample_average')} | {cell('mean')} "
                   f"| {secs:.1f} |")
    return "\n".join(out)


def table_posterior(rows, runner):
    out = []
    for _, label, job, _, flags in rows:
        d = runner.folder(job)
        out.append(f"**{label}** (`{' '.join(flags)}`):\n")
        if not (d / "done").exists():
            out.append("not run\n")
            continue
        out.append((d / "stdout-0.md").read_text())
    return "\n".join(out)


def fid_points(rows, runner):
    """(job name, NFE per sample, FID) of the finished sample rows."""
    points = []
    for _, _, job, _, _ in rows:
        d = runner.folder(job)
        if (d / "done").exists():
            fid = json.loads((d / "fid.json").read_text())["scores"]
            t = sample_timings(json.loads((d / "samples" / "run.json").read_text()))
            points.append((job.name, t["denoiser_evaluations"] / fid["n"], fid["fid"]))
    return points


def plot(out, series, x, logx, title, xlabel):
    """Draws FID against x with scripts/plot_curve.py; series: name -> [(x, FID)]."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        args = []
        for i, (name, pts) in enumerate(series.items()):
            csv = Path(tmp) / f"{i}.csv"
            csv.write_text(f"{x},fid\n" + "".join(f"{a},{b}\n" for a, b in pts))
            args.append(f"{name}={csv}")
        script = Path(__file__).resolve().parents[1] / "plot_curve.py"
        subprocess.run([sys.executable, str(script), "--out", str(out), "--x", x, "--y", "fid",
                        "--title", title, "--xlabel", xlabel, "--ylabel", "FID (n = 1000)"]
                       + (["--logx"] if logx else []) + args, check=True)
    return out


def figures(sample_rows, runner, folder):
    """Section 1: FID against NFE per schedule; section 2: FID against T0 per denoiser."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    s1 = {}
    for name, nfe, fid in fid_points([r for r in sample_rows if r[0] == 1], runner):
        schedule = name[len("s1-"):].rsplit("-", 1)[0]
        s1.setdefault(schedule, []).append((nfe, fid))
    made.append(plot(folder / "schedules.svg", s1, "nfe", True,
                     "Section 1: FID against network evaluations", "NFE per sample"))
    s2 = {}
    for name, _, fid in fid_points([r for r in sample_rows if r[0] == 2], runner):
        denoiser, _, t0 = name[len("s2-"):].rpartition("t0-")
        s2.setdefault(denoiser.rstrip("-") or "network", []).append((float(t0), fid))
    made.append(plot(folder / "temperature.svg", s2, "t0", False,
                     "Section 2: FID against the starting temperature", "T0"))
    return [m for m in made if m]


def render(marker, text, doc):
    begin, end = f"<!-- results:{marker}:begin -->", f"<!-- results:{marker}:end -->"
    if begin not in doc or end not in doc:
        raise SystemExit(f"error: docs/results.md has no {begin} … {end} markers")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{text}\n{end}{tail}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", required=True, help="docs/results.md (full) or a folder (quick)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sections", default="1,2,3,4,5,6")
    ap.add_argument("--plan", action="store_true", help="list the jobs and the time left")
    ap.add_argument("--only", default="", help="run only the jobs whose name contains this")
    ap.add_argument("--no-run", action="store_true",
                    help="run nothing: record what the cache holds and render the tables")
    ap.add_argument("--records", default="",
                    help="keep and reuse finished jobs' small outputs here (see the doc)")
    args = ap.parse_args()
    wanted = {int(s) for s in args.sections.split(",")}
    repo = Path(__file__).resolve().parents[2]
    runner = Runner(args.host, args.cache, repo, args.plan or args.no_run, args.records,
                    args.plan)
    sample_rows = sections(args.quick, args.data)
    rest = restoration_rows(args.quick, args.data) + posterior_rows(args.quick, args.data)
    cost = cost_rows(args.quick, args.data)
    every = [r for r in sample_rows + rest + cost
             if r[0] in wanted and args.only in r[2].name]
    left = [r for r in every if not (runner.folder(r[2]) / "done").exists()]
    rate = evals_per_second([r[2] for r in every], runner)

    def evals_left(job):
        return job.evals * (job.shards - runner.shards_done(job)) // job.shards

    hours = sum(evals_left(r[2]) for r in left) / rate / 3600
    print(f"results: {len(every)} jobs, {len(left)} to run, about {hours:.1f} h of network "
          f"evaluations on 2 cores at {rate:.0f} per second", file=sys.stderr)
    if args.plan:
        for r in left:
            job = r[2]
            pieces = (f", shards {runner.shards_done(job)}/{job.shards} done"
                      if job.shards > 1 else "")
            print(f"  {job.name}: {evals_left(job)} evaluations left{pieces}", file=sys.stderr)
        return
    for _, _, job, then, _ in every:
        try:
            runner.run(job, then)
        except subprocess.CalledProcessError as e:
            raise SystemExit(f"error: job {job.name}: `{' '.join(e.cmd)}` exited with "
                             f"{e.returncode}; rerun to resume")
    tables = {}
    for s in (1, 2, 3):
        if s in wanted:
            tables[f"section{s}"] = table_samples([r for r in sample_rows if r[0] == s], runner)
    if 4 in wanted:
        tables["section4"] = table_restoration([r for r in rest if r[0] == 4], runner)
    if 5 in wanted:
        tables["section5"] = table_posterior([r for r in rest if r[0] == 5], runner)
    if 6 in wanted:
        tables["section6"] = table_cost(cost, runner)
    # Beside the report: docs/figures for docs/results.md (a copy elsewhere keeps its own).
    folder = Path(args.out) / "figures" if args.quick else Path(args.out).parent / "figures"
    drawn = figures(sample_rows, runner, folder) if wanted & {1, 2} else []
    if args.quick:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in tables.items():
            (out / f"{name}.md").write_text(text + "\n")
            if "not run" in text or text.count("\n") < 2:
                raise SystemExit(f"error: {name} has rows that did not run")
        if wanted >= {1, 2} and len(drawn) != 2:
            raise SystemExit("error: the figures of sections 1 and 2 were not drawn")
        print(f"results --quick: {len(tables)} section tables and {len(drawn)} figures in "
              f"{out}", file=sys.stderr)
    else:
        doc = Path(args.out).read_text()
        for name, text in tables.items():
            doc = render(name, text, doc)
        tmp = Path(args.out + ".tmp")
        tmp.write_text(doc)
        os.replace(tmp, args.out)
        print(f"results: tables written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
