"""The training driver behind `gshard train`: corpus batches -> partitioned train step on a mesh,
metrics.jsonl, progress bar, atomic checkpoints, exact resume, held-out loss.

Exact resume: step s (1-based) trains on BatchIterator.batch_at(s - 1) with the PRNG key
fold_in(PRNGKey(seed), s); params and optimizer state are restored bit-exact from the newest good
checkpoint, so `--steps 40` then `--steps 60` gives the same loss curve as `--steps 60` at once.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import numpy as np

from . import checkpoint as ckpt
from .config import ConfigError, RunConfig, dumps, from_dict
from .distributed import MeshPlan, ProcessSpec, initialize, parse_mesh
from .metrics import MetricsLog, Progress

CONFIG = "config.json"
# Knobs that may change between runs on one workdir without invalidating its checkpoints.
RESUMABLE = {"train.steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
             "train.dev_every", "train.dev_batches", "train.time_limit_s"}


class WorkdirMismatch(ValueError):
    pass


def _flat(cfg: RunConfig) -> dict:
    return {f"{s}.{k}": v for s, sec in cfg.to_dict().items() if isinstance(sec, dict)
            for k, v in sec.items()}


def prepare_workdir(cfg: RunConfig, workdir: Path, write: bool = True) -> RunConfig:
    """Resolve data.dir, check the workdir's saved config agrees (but for RESUMABLE keys, and
    eval.*), and (write=True) save the config. With write=False nothing is created."""
    cfg = cfg.replace(data=dataclasses.replace(cfg.data, dir=str(Path(cfg.data.dir).resolve())))
    path = Path(workdir) / CONFIG
    if path.exists():
        old = _flat(load_workdir_config(workdir))
        new = _flat(cfg)
        diff = [k for k in new if k not in RESUMABLE and not k.startswith("eval.")
                and old.get(k) != new[k]]
        if diff:
            raise WorkdirMismatch(
                f"{workdir} holds a run with a different config: " +
                ", ".join(f"{k}={old.get(k)!r} (now {new[k]!r})" for k in diff) +
                "; use the same settings, another --workdir, or --restart to start it over")
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(dumps(cfg))
        os.replace(tmp, path)
    return cfg


def load_workdir_config(workdir) -> RunConfig:
    """WORKDIR/config.json; FileNotFoundError when missing, ConfigError (naming the file and the
    way out) when it does not read."""
    path = Path(workdir) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: train first (gshard train --workdir {workdir})")
    try:
        return from_dict(json.loads(path.read_text()))
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path} is not a readable gshard config ({why}); restore it, or start "
                          f"over with: gshard train --workdir {workdir} --restart") from None


def recorded_data_dir(workdir) -> str | None:
    """The data.dir a workdir's run was trained on (absolute), or None for a new workdir."""
    if not (Path(workdir) / CONFIG).exists():
        return None
    return load_workdir_config(workdir).data.dir


def check_run(cfg: RunConfig, workdir, mesh: str | None, restart: bool = False) -> RunConfig:
    """Everything about a run that can be checked before data is downloaded or the workdir is
    written: the model and mesh (vocabulary sizes aside) and agreement with the workdir's run."""
    plan = parse_mesh(mesh, jax.device_count())
    model_config(cfg, None, plan)
    return cfg if restart else prepare_workdir(cfg, Path(workdir), write=False)


def start_over(workdir) -> list[str]:
    """--restart: delete the workdir's run (config, checkpoints, metrics); returns what went."""
    import shutil
    w = Path(workdir)
    ckpt.close(w)
    gone = []
    for name in (CONFIG, "metrics.jsonl", "lengths.json", "checkpoints"):
        p = w / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        gone.append(str(p))
    return gone


def make_optimizer(cfg: RunConfig):
    from .step import make_optimizer as mk

    t = cfg.train
    if t.optimizer == "adam":
        return mk("adam", learning_rate=t.learning_rate, warmup_steps=t.warmup_steps,
                  clip_norm=t.clip_norm or None, schedule=t.lr_schedule, decay_steps=t.steps,
                  final_fraction=t.lr_final_fraction)
    return mk("adafactor", base_lr=t.learning_rate, warmup_steps=max(t.warmup_steps, 1))


def model_config(cfg: RunConfig, corpus, plan: MeshPlan | None):
    """The ModelConfig of this run on this mesh (corpus None: stand-in vocabularies, to check a
    config before the corpus exists); ValueError naming the key when they do not fit."""
    axes = plan.axes() if plan is not None and plan.size > 1 else None
    vocab = (corpus.src_vocab_size, corpus.tgt_vocab_size) if corpus is not None else (8, 8)
    mc = cfg.model_config(*vocab, axes)
    k = cfg.train.microbatches
    if k < 1 or cfg.train.batch_size % k:
        raise ValueError(f"train.microbatches={k} must be >= 1 and divide train.batch_size="
                         f"{cfg.train.batch_size}")
    if plan is not None and plan.size > 1:
        if (cfg.train.batch_size // k) % plan.data_size():
            raise ValueError(f"train.batch_size={cfg.train.batch_size} / train.microbatches={k} "
                             f"is not divisible by the {plan.data_size()} devices of the data "
                             f"axes ({plan.describe()})")
        if cfg.train.batch_size % plan.data_size():
            raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by the "
                             f"{plan.data_size()} devices of the data axes ({plan.describe()})")
        if mc.moe.every and mc.moe.num_experts < plan.size:
            raise ValueError(f"moe.num_experts={mc.moe.num_experts} < {plan.size} devices the "
                             f"experts are split over; use moe.num_experts>={plan.size}")
    return mc


def init_state(mc, optimizer, seed: int):
    """(params, opt_state) as host numpy trees (identical on every process)."""
    from .step import init_train_state
    state = jax.jit(lambda k: init_train_state(mc, optimizer, k))(jax.random.PRNGKey(seed))
    return jax.tree_util.tree_map(np.asarray, state)


def step_key(seed: int, step: int) -> np.ndarray:
    return np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed + 1), step))


def model_batch(batch: dict) -> dict:
    return {k: batch[k] for k in ("src", "tgt_in", "tgt_out", "src_pad", "tgt_pad")}


def _tokens(batch) -> int:
    return int((1 - batch["src_pad"]).sum() + (1 - batch["tgt_pad"]).sum())


@dataclass
class Trainer:
    """Everything a run needs, built once; `run()` trains to cfg.train.steps."""
    cfg: RunConfig
    workdir: Path
    plan: MeshPlan
    proc: ProcessSpec
    progress: bool = True
    log: callable = print

    def __post_init__(self):
        import gshard
        from gshard.data import BatchIterator, Corpus
        from .step import make_train_step

        self.main = jax.process_index() == 0
        self.cfg = prepare_workdir(self.cfg, self.workdir, write=False)
        self.corpus = Corpus.load(self.cfg.data.dir)
        t = self.cfg.train
        self.mc = model_config(self.cfg, self.corpus, self.plan)
        self.batches = BatchIterator(self.corpus, t.batch_size, t.src_len, t.tgt_len,
                                     temperature=t.temperature, seed=t.seed,
                                     length_filter=t.length_filter,
                                     languages=_languages(t, self.corpus))
        if self.main:                        # validated: only now is the workdir written
            prepare_workdir(self.cfg, self.workdir, write=True)
        self.mesh = self.plan.make()
        self.optimizer = make_optimizer(self.cfg)
        if self.main:
            self._report_lengths()
        key = (self.mc, self.plan, _compile_key(self.cfg))
        if key not in _COMPILED:             # one partition + compile per process and config
            _COMPILED[key] = (self._partition_step(),
                              gshard.partition(partial(_dev_loss, self.mc), self.mesh))
        self.step_fn, self.dev_fn = _COMPILED[key]

    def _report_lengths(self):
        """WORKDIR/lengths.json: what the length filter kept (train pairs, piece lengths)."""
        rep = self.batches.length_report()
        (self.workdir / "lengths.json").write_text(json.dumps(rep, indent=1))
        if self.cfg.train.length_filter:
            self.log(f"length filter: {rep['kept']} of {rep['total']} train pairs fit "
                     f"src_len={rep['src_len']}, tgt_len={rep['tgt_len']} ({rep['left_out']} left "
                     f"out; pieces p50/p90/p99 src {rep['src_pieces_all']}, tgt "
                     f"{rep['tgt_pieces_all']})")

    def _partition_step(self):
        """The partitioned train step: params and optimizer state donated; with
        train.shard_optimizer on a mesh with data axes, the weight update sharded over them."""
        import gshard
        from .step import make_train_step
        t = self.cfg.train
        kw = dict(label_smoothing=t.label_smoothing, aux_loss_weight=t.aux_loss_weight,
                  deterministic=self.cfg.model.dropout == 0.0, microbatches=t.microbatches)
        specs = None
        if t.shard_optimizer and self.plan.data_size() > 1:
            specs = self._update_specs()
        step = make_train_step(self.mc, self.optimizer, update_specs=specs, **kw)
        return gshard.partition(step, self.mesh, donate_argnums=(0, 1))

    def _abstract_args(self):
        from .step import init_train_state
        t = self.cfg.train
        params, state = jax.eval_shape(lambda k: init_train_state(self.mc, self.optimizer, k),
                                       jax.random.PRNGKey(0))
        ints = lambda n: jax.ShapeDtypeStruct((t.batch_size, n), np.int32)  # noqa: E731
        flts = lambda n: jax.ShapeDtypeStruct((t.batch_size, n), np.float32)  # noqa: E731
        batch = {"src": ints(t.src_len), "tgt_in": ints(t.tgt_len), "tgt_out": ints(t.tgt_len),
                 "src_pad": flts(t.src_len), "tgt_pad": flts(t.tgt_len)}
        return params, state, batch, jax.ShapeDtypeStruct((2,), np.uint32)

    def _update_specs(self):
        """Forward layouts from the model's forward pass; update layouts add the data axes."""
        from .step import loss_fn
        from .zero import weight_update_specs
        params, _, batch, key = self._abstract_args()
        data = self.mc.mesh.data
        data = (data,) if isinstance(data, str) else tuple(data or ())
        fwd = lambda p, b, k: loss_fn(p, self.mc, b, k, deterministic=True)[0]  # noqa: E731
        return weight_update_specs(fwd, params, (batch, key), self.mesh, data)

    def state_shardings(self):
        """Where the step wants (params, opt_state): the restore target's shardings."""
        params, state, batch, key = self._abstract_args()
        low = self.step_fn.lower(params, state, batch, key)
        n = len(jax.tree_util.tree_leaves((params, state)))
        return low.program.jit_in_shardings[:n]

    def restore(self):
        """(step, state) of the newest good checkpoint, restored straight onto this run's mesh
        (which may differ from the one that wrote it), or (0, a fresh state)."""
        template = init_state(self.mc, self.optimizer, self.cfg.train.seed)
        target = ckpt.abstract(template, self.state_shardings())
        try:
            got = ckpt.restore_latest(self.workdir, target)      # warnings: stderr
        except ckpt.CheckpointError as e:
            raise ckpt.CheckpointError(
                f"{e}; nothing was trained. Keep them and fix the files, or start over "
                f"(deleting them) with: gshard train --workdir {self.workdir} --restart") from None
        if got is None:
            return 0, template
        self.log(f"resuming from {got.path} (step {got.step})")
        return got.step, got.state

    def dev_loss(self, params) -> float:
        """Token-weighted cross-entropy on fixed dev batches (deterministic, no dropout)."""
        from gshard.data import BatchIterator
        t = self.cfg.train
        it = BatchIterator(self.corpus, t.batch_size, t.src_len, t.tgt_len,
                           temperature=t.temperature, seed=10_000 + t.seed, split="dev",
                           length_filter=t.length_filter, languages=_languages(t, self.corpus))
        tot = n = 0.0
        for i in range(t.dev_batches):
            ce, nt = self.dev_fn(params, model_batch(it.batch_at(i)))
            tot, n = tot + float(ce) * float(nt), n + float(nt)
        return tot / max(n, 1.0)

    def run(self) -> dict:
        t = self.cfg.train
        start, (params, opt_state) = self.restore()
        if start >= t.steps:
            self.log(f"{self.workdir}: already trained to step {start} >= --steps {t.steps}")
            return {"step": start, "resumed_from": start, "trained": 0}
        metrics_log = MetricsLog(self.workdir, start, enabled=self.main)
        bar = Progress(start, t.steps, enabled=self.progress and self.main)
        t0, last, s = time.perf_counter(), {}, start
        while s < t.steps:
            s += 1
            params, opt_state, last = self._one_step(s, params, opt_state, metrics_log, bar)
            out_of_time = self._out_of_time(t0, s)
            if s % t.checkpoint_every == 0 or s == t.steps or out_of_time:
                ckpt.save(self.workdir, s, (params, opt_state), keep=t.keep_checkpoints,
                          extra={"loss": float(last["loss"])})
            if t.dev_every and s % t.dev_every == 0 and s != t.steps:
                metrics_log.write({"step": s, "dev_loss": self.dev_loss(params)})
            if out_of_time:
                self.log(f"\ntrain.time_limit_s={t.time_limit_s:g} reached: stopped at step {s}")
                break
        bar.close()
        ckpt.close(self.workdir)
        dev = self.dev_loss(params)
        metrics_log.write({"step": s, "dev_loss": dev, "final": True})
        wall = time.perf_counter() - t0
        return {"step": s, "resumed_from": start, "trained": s - start,
                "loss": float(last["loss"]), "dev_loss": dev, "seconds": wall}

    def _out_of_time(self, t0: float, s: int) -> bool:
        """Every process must agree, so process 0 decides and the others follow."""
        limit = self.cfg.train.time_limit_s
        if not limit or s >= self.cfg.train.steps:
            return False
        stop = time.perf_counter() - t0 > limit
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            stop = bool(multihost_utils.broadcast_one_to_all(np.int32(stop)))
        return stop

    def _one_step(self, s, params, opt_state, metrics_log, bar):
        _test_hook(s)
        batch = self.batches.batch_at(s - 1)
        t0 = time.perf_counter()
        params, opt_state, m = self.step_fn(params, opt_state, model_batch(batch),
                                            step_key(self.cfg.train.seed, s))
        loss = float(m["loss"])                       # blocks until the step is done
        dt = time.perf_counter() - t0
        tps = _tokens(batch) / dt
        if s % self.cfg.train.log_every == 0 or s == self.cfg.train.steps:
            metrics_log.write({
                "step": s, "loss": loss, "cross_entropy": m["cross_entropy"],
                "aux_loss": m["aux_loss"], "accuracy": m["accuracy"],
                "dropped_fraction": m["dropped_fraction"], "expert_load": m["expert_load"],
                "layer_dropped": m["layer_dropped"],
                "grad_norm": m["grad_norm"], "tokens_per_s": round(tps, 1),
                "step_seconds": round(dt, 4)})
        bar.update(s, loss, tps)
        return params, opt_state, {"loss": loss}


_COMPILED: dict = {}


def _languages(t, corpus) -> tuple | None:
    """train.languages as a tuple (None = every language); unknown codes are an error."""
    langs = tuple(x.strip() for x in t.languages.split(",") if x.strip())
    bad = [x for x in langs if x not in corpus.languages]
    if bad:
        raise ValueError(f"train.languages: unknown language(s) {', '.join(bad)}; the corpus "
                         f"has {', '.join(corpus.languages)}")
    return langs or None


def _compile_key(cfg: RunConfig):
    return tuple(sorted((k, v) for k, v in _flat(cfg).items()
                        if k.startswith("train.") and k not in RESUMABLE))


def _dev_loss(mc, params, batch):
    from .step import loss_fn
    _, m = loss_fn(params, mc, batch, None, deterministic=True)
    return m["cross_entropy"], m["num_tokens"]


def _test_hook(step: int):
    """Tests only. GSHARD_TEST_DIE_AT="PID:STEP": that process exits abruptly at that step;
    GSHARD_TEST_SIGKILL_AT="STEP": every process is SIGKILLed there (mid-run, saves in flight)."""
    spec = os.environ.get("GSHARD_TEST_DIE_AT")
    if spec:
        pid, at = (int(x) for x in spec.split(":"))
        if pid == jax.process_index() and step == at:
            os._exit(17)
    kill = os.environ.get("GSHARD_TEST_SIGKILL_AT")
    if kill and int(kill) == step:
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def train(cfg: RunConfig, workdir, *, mesh: str | None = None, proc: ProcessSpec | None = None,
          progress: bool = True, log=print) -> dict:
    """Train (or resume) the run in `workdir` to cfg.train.steps; returns a summary dict."""
    proc = proc or ProcessSpec()
    dog = initialize(proc)
    plan = parse_mesh(mesh, jax.device_count())
    trainer = Trainer(cfg, Path(workdir), plan, proc, progress=progress, log=log)
    if jax.process_index() == 0:
        log(f"training {cfg.preset}: mesh {plan.describe()} over {jax.device_count()} devices "
            f"({jax.process_count()} process(es)); workdir {workdir}")
    out = trainer.run()
    if dog is not None:
        dog.stop()
    return out
