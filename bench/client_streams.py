"""Traffic of a real scikit-learn model whose every answer is logged as a Bulwark event.

The pieces of the client-attack bench (`bench/client_attacks.py`), importable by tests:

- `load_dataset` / `train_model`: a dataset that ships with scikit-learn (digits: 64 integer
  pixels, 10 classes; synthetic: `make_classification`, 20 continuous features, 4 classes)
  and an MLP fitted on half of it. Benign rows are drawn from the other half by a smoothed
  bootstrap (a real row plus a little noise, on the data's own lattice), so clients send
  real-looking, rarely identical rows.
- `LoggedModel`: the deployed model. Whoever asks it — benign clients in bulk, or an ART
  attack through `LoggedModel.art_classifier` — gets its answer from `answer`, which logs
  every query with its client key and event time. `events` are the Bulwark prediction events
  (docs/contract.md), in event-time order.
- `benign_traffic`: long-lived API keys with daily sessions (an afternoon peak), one heavy
  user (10x), and a population-wide shift of one feature halfway through the run.
- `Clock`: an attacker's timestamps, either a bot's steady rate or an ordinary client's
  sessions.
- `replay` / `judge`: the stream through Bulwark's pipeline with default settings, and per
  key the first `suspicious_client` evidence, counted in that key's own queries.

ART is imported only inside the functions that build ART objects.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import random
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

T0 = 1767225600.0  # 2026-01-01 00:00 UTC: runs start at midnight (the hard case for cycles)
DAY = 86_400.0
MODEL = "clf"
TYPICAL_DAILY = 200.0  # median queries per benign key per day
SESSION_QUERIES = 10.0  # mean queries per session
SESSION_GAP = 20.0  # mean seconds between a session's queries
# Session starts by hour of day: quiet nights, a morning ramp, an afternoon peak.
_HOURLY = np.array(
    [0.2] * 6 + [0.6] * 3 + [1.0] * 3 + [1.6] * 2 + [2.5] * 4 + [1.2] * 2 + [0.6] * 2 + [0.3] * 2
)
HOURLY = _HOURLY / _HOURLY.sum()


@dataclass
class Dataset:
    name: str
    names: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    pool: np.ndarray  # held-out rows benign clients' data is drawn around
    low: np.ndarray  # per-feature range of the data
    high: np.ndarray
    integer: bool  # values on an integer lattice (pixels)
    image_shape: tuple[int, ...]  # how SimBA sees one row (channels first)
    # The features whose distribution changes for everyone midway (`shifted`: by default the
    # busiest pixel or feature alone).
    shift_features: tuple[int, ...]

    @property
    def classes(self) -> int:
        return int(self.y_train.max()) + 1

    def sample(
        self,
        rng: np.random.Generator,
        n: int,
        shifted: np.ndarray | bool,
        weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """n real-looking rows: pool rows (uniformly, or by `weights`, one per pool row) with
        a little noise; `shifted` rows (a bool or one per row) have the shift features moved,
        as after a change upstream."""
        if weights is None:
            rows = self.pool[rng.integers(len(self.pool), size=n)].astype(float)
        else:
            rows = self.pool[rng.choice(len(self.pool), size=n, p=weights)].astype(float)
        if self.integer:
            varies = self.pool.std(axis=0) > 1.0
            rows += np.rint(rng.normal(0, 0.7, rows.shape)) * varies
            rows = np.clip(rows, self.low, self.high)
        else:
            rows += rng.normal(0, 0.05, rows.shape) * self.pool.std(axis=0)
            rows = _significant(rows, 4)
        moved = np.broadcast_to(np.asarray(shifted, dtype=bool), (n,))
        for j in self.shift_features:
            if self.integer:
                rows[moved, j] = np.clip(rows[moved, j] + 5, self.low[j], self.high[j])
            else:
                rows[moved, j] = _significant(rows[moved, j] + self.pool[:, j].std(), 4)
        return rows

    def shifted(self, features: int) -> Dataset:
        """The same data with its `features` busiest features shifted midway (the busiest
        first, as the default one)."""
        return replace(self, shift_features=busiest(self.pool, features))


def busiest(pool: np.ndarray, count: int) -> tuple[int, ...]:
    """The `count` features (pixels) of widest spread in `pool`, the widest first."""
    return tuple(int(j) for j in np.argsort(-pool.std(axis=0), kind="stable")[:count])


def _significant(x: np.ndarray, digits: int) -> np.ndarray:
    magnitude = np.floor(np.log10(np.maximum(np.abs(x), 1e-12)))
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.round(x * scale) / scale


def load_dataset(name: str, seed: int) -> Dataset:
    """A dataset that ships with scikit-learn or River (digits: 8x8 images of 0-16 pixels;
    synthetic: `make_classification`, 20 continuous features, 4 classes; segment: River's
    bundled Image Segmentation data, 2,310 real image regions, 18 features of very different
    scales, 7 classes; wine: scikit-learn's wine recognition data, 178 real wines, 13
    chemical measurements of very different scales, 3 classes), split in half: training rows and the
    pool benign data is drawn around."""
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine, make_classification
    from sklearn.model_selection import train_test_split
    from sklearn.utils import Bunch

    if name == "digits":
        data = load_digits()
        names = [f"p{i // 8}{i % 8}" for i in range(64)]  # pixel (row, column)
        image_shape: tuple[int, ...] = (1, 8, 8)
        integer = True
    elif name == "synthetic":
        x, y = make_classification(
            n_samples=6000,
            n_features=20,
            n_informative=10,
            n_redundant=4,
            n_classes=4,
            n_clusters_per_class=2,
            random_state=seed,
        )
        data = Bunch(data=x, target=y)
        names = [f"f{i:02d}" for i in range(20)]
        image_shape = (1, len(names), 1)
        integer = False
    elif name == "segment":
        from river.datasets import ImageSegments

        rows = list(ImageSegments())
        names = [n.replace("-", "_") for n in rows[0][0]]
        classes = sorted({label for _, label in rows})
        data = Bunch(
            data=np.array([list(x.values()) for x, _ in rows]),
            target=np.array([classes.index(label) for _, label in rows]),
        )
        image_shape = (1, len(names), 1)
        integer = False
    elif name in ("wine", "cancer"):
        data = load_wine() if name == "wine" else load_breast_cancer()
        names = [n.replace("/", "_").replace(" ", "_") for n in data.feature_names]
        image_shape = (1, len(names), 1)
        integer = False
    else:
        raise ValueError(f"unknown dataset {name!r} (digits, synthetic, segment, wine or cancer)")
    x = data.data.astype(float)
    x_train, pool, y_train, _ = train_test_split(
        x, data.target, test_size=0.5, random_state=seed, stratify=data.target
    )
    return Dataset(
        name=name,
        names=names,
        x_train=x_train,
        y_train=y_train.astype(int),
        pool=pool,
        low=x.min(axis=0),
        high=x.max(axis=0),
        integer=integer,
        image_shape=image_shape,
        shift_features=busiest(pool, 1),  # the busiest pixel or feature
    )


def preferences(
    dataset: Dataset, rng: np.random.Generator, keys: int, alpha: float
) -> list[np.ndarray | None]:
    """Per key, the weights its rows are drawn from the pool with: with `alpha` > 0, a mix of
    the pool's k-means clusters (as many as classes, on standardized inputs, not the model's
    answers) drawn from Dirichlet(alpha x clusters x each cluster's share of the pool), as a
    customer serving its own segment sends; 0: every key samples the whole pool alike (no
    random draw is spent).

    The mixes average to the pool's own cluster shares: the population is the union of its
    customers' segments, so the pool (what a natural-data extractor samples) is what the
    traffic looks like as a whole. (A flat Dirichlet(alpha) averaged to equal cluster shares:
    with digits' clusters of 0.1% to 23% of the pool, the traffic's class mix then differed
    from the pool's by a KL of 0.05-0.07, as far from it as benign keys' own mixes.)"""
    if alpha <= 0:
        return [None] * keys
    labels = clusters(dataset)
    k = dataset.classes
    size = np.bincount(labels, minlength=k).astype(float)
    mixes = rng.dirichlet(alpha * k * size / size.sum(), size=keys)
    return [mix[labels] / size[labels] for mix in mixes]


def clusters(dataset: Dataset) -> np.ndarray:
    """Each pool row's segment: k-means clusters of the standardized pool, as many as
    classes (what `preferences` mixes; `bench/extraction_bound.py` tests mixes of them)."""
    from sklearn.cluster import KMeans

    scaled = (dataset.pool - dataset.pool.mean(axis=0)) / (dataset.pool.std(axis=0) + 1e-9)
    return KMeans(dataset.classes, n_init=4, random_state=0).fit_predict(scaled)


def train_model(dataset: Dataset, seed: int) -> object:
    """The deployed model: a scaled MLP (smooth scores, as score-based attacks expect)."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=seed),
    )
    model.fit(dataset.x_train, dataset.y_train)
    return model


class QueryBudgetSpent(Exception):
    """Raised into an ART attack when its key has sent its query budget."""


@dataclass
class Log:
    x: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)
    clients: list[np.ndarray] = field(default_factory=list)
    proba: list[np.ndarray] = field(default_factory=list)


class LoggedModel:
    """The model behind the API: every answer is logged with the caller's key and time."""

    def __init__(self, model: object, dataset: Dataset, box: str = "global") -> None:
        """`box`: the bounds the attackers' ART estimators clip to: "global", one range for
        every feature (the data's smallest and largest value: ART's usual scalar bounds),
        or "per-feature", each feature's own range (an attacker who knows the schema; ZOO,
        which ART lets clip to scalar bounds only, keeps the global one)."""
        self.model = model
        self.dataset = dataset
        self.box = box
        self.shift_ts = math.inf  # when the population's input shift began, if it has
        self.log = Log()

    def answer(self, x: np.ndarray, clients: Sequence[str], ts: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float).reshape(len(ts), -1)
        proba = self.model.predict_proba(x)  # type: ignore[attr-defined]
        self.log.x.append(x)
        self.log.ts.append(np.asarray(ts, dtype=float))
        self.log.clients.append(np.asarray(clients, dtype=object))
        self.log.proba.append(proba)
        return proba

    def predict_fn(self, keys: Sequence[str], clock: Clock, budget: int) -> Callable:
        """What an attacker's HTTP client would be: queries go out under `keys` (round-robin
        when several), timed by `clock`, until `budget` queries are spent."""
        sent = 0

        def predict(x: np.ndarray) -> np.ndarray:
            nonlocal sent
            x = np.asarray(x, dtype=float).reshape(len(x), -1)
            room = budget - sent
            if room <= 0:
                raise QueryBudgetSpent
            take = x[:room]
            clients = [keys[(sent + i) % len(keys)] for i in range(len(take))]
            proba = self.answer(take, clients, clock.take(len(take)))
            sent += len(take)
            if len(take) < len(x):
                raise QueryBudgetSpent
            return proba

        return predict

    def art_classifier(
        self,
        keys: Sequence[str],
        clock: Clock,
        budget: int,
        image: bool = False,
        scalar_box: bool = False,
    ) -> object:
        """An ART black-box classifier whose predict goes through this logged model (the
        neural-network flavour, with rows seen as images, for SimBA)."""
        from art.estimators.classification import (
            BlackBoxClassifier,
            BlackBoxClassifierNeuralNetwork,
        )

        d = self.dataset
        clip: tuple[object, object] = (float(d.low.min()), float(d.high.max()))
        if self.box == "per-feature" and not scalar_box:
            shape = d.image_shape if image else (len(d.names),)
            # ART needs min < max everywhere: a feature constant in the data (digits' corner
            # pixels) keeps the global range.
            constant = d.high <= d.low
            low = np.where(constant, d.low.min(), d.low)
            high = np.where(constant, d.high.max(), d.high)
            clip = (low.reshape(shape).astype(np.float32), high.reshape(shape).astype(np.float32))
        predict = self.predict_fn(keys, clock, budget)
        if image:
            return BlackBoxClassifierNeuralNetwork(
                predict, d.image_shape, d.classes, channels_first=True, clip_values=clip
            )
        return BlackBoxClassifier(predict, (len(d.names),), d.classes, clip_values=clip)

    def events(self) -> tuple[list[bytes], np.ndarray, np.ndarray]:
        """The log as JSONL lines in event-time order, with each line's client and time."""
        x = np.concatenate(self.log.x)
        ts = np.concatenate(self.log.ts)
        clients = np.concatenate(self.log.clients)
        proba = np.concatenate(self.log.proba)
        order = np.argsort(ts, kind="stable")
        x, ts, clients, proba = x[order], ts[order], clients[order], proba[order]
        names = self.dataset.names
        classes = [str(c) for c in range(proba.shape[1])]
        # Rows of whole numbers are sent as ints (as a producer sends pixels), others as floats.
        whole = (x == np.round(x)).all(axis=1) & (np.abs(x) < 2**53).all(axis=1)
        values = [
            ints if w else floats
            for w, ints, floats in zip(
                whole.tolist(), x.astype(np.int64).tolist(), x.tolist(), strict=True
            )
        ]
        lines = [
            orjson.dumps(
                {
                    "type": "prediction",
                    "model": MODEL,
                    "id": f"q-{i:07d}",
                    "ts": t,
                    "client": client,
                    "features": dict(zip(names, row, strict=True)),
                    "prediction": label,
                    "scores": dict(zip(classes, p, strict=True)),
                }
            )
            for i, (t, client, row, label, p) in enumerate(
                zip(
                    np.round(ts, 3).tolist(),
                    clients.tolist(),
                    values,
                    proba.argmax(axis=1).tolist(),
                    np.round(proba, 5).tolist(),
                    strict=True,
                )
            )
        ]
        return lines, clients, ts


class Clock:
    """An attacker's send times from `start`: a bot's steady rate (`gap` seconds on average),
    or, with `daily` set, an ordinary client's sessions at that many queries a day."""

    def __init__(
        self, rng: np.random.Generator, start: float, gap: float = 2.0, daily: float | None = None
    ) -> None:
        self.rng = rng
        self.now = start
        self.gap = gap
        self.daily = daily
        self.pending: list[float] = []

    def take(self, n: int) -> np.ndarray:
        if self.daily is None:
            ts = self.now + np.cumsum(self.rng.exponential(self.gap, n))
            self.now = float(ts[-1]) if n else self.now
            return ts
        while len(self.pending) < n:
            day = math.floor((self.now - T0) / DAY)
            more = client_day(self.rng, T0 + day * DAY, self.daily)
            self.pending += sorted(t for t in more.tolist() if t > self.now)
            self.now = T0 + (day + 1) * DAY
        out, self.pending = self.pending[:n], self.pending[n:]
        return np.array(out)


def client_day(rng: np.random.Generator, day_start: float, daily: float) -> np.ndarray:
    """One key's query times over one day: sessions started by the hourly profile."""
    sessions = rng.poisson(daily / SESSION_QUERIES)
    if sessions == 0:
        return np.empty(0)
    starts = day_start + (rng.choice(24, sessions, p=HOURLY) + rng.random(sessions)) * 3600
    lengths = rng.geometric(1 / SESSION_QUERIES, sessions)
    times = [
        s + np.cumsum(rng.exponential(SESSION_GAP, k)) for s, k in zip(starts, lengths, strict=True)
    ]
    ts = np.concatenate(times)
    return ts[ts < day_start + DAY]  # sessions running past midnight end there


@dataclass
class Benign:
    keys: list[str]
    heavy: str
    client_days: int
    shift_ts: float
    end_ts: float


def benign_traffic(
    served: LoggedModel,
    rng: np.random.Generator,
    clients: int,
    days: float,
    typical_daily: float = TYPICAL_DAILY,
    preference: float = 0.0,
) -> Benign:
    """Long-lived keys over `days`, each at its own volume (log-normal around the typical),
    key 0 a heavy user at 10x; halfway through, the shift feature moves for everyone. With
    `preference` > 0 each key draws its rows from its own mix of the pool (`preferences`);
    0: every key samples the whole pool alike."""
    end = T0 + days * DAY
    shift_ts = T0 + days * DAY / 2
    keys = [f"key-{c:03d}" for c in range(clients)]
    all_ts, all_keys, owner = [], [], []
    client_days = 0
    for c, key in enumerate(keys):
        daily = typical_daily * (10.0 if c == 0 else float(rng.lognormal(0, 0.5)))
        for day in range(math.ceil(days)):
            ts = client_day(rng, T0 + day * DAY, daily)
            ts = ts[ts < end]
            client_days += bool(len(ts))
            all_ts.append(ts)
            all_keys += [key] * len(ts)
            owner.append(np.full(len(ts), c))
    ts = np.concatenate(all_ts)
    if preference <= 0:
        rows = served.dataset.sample(rng, len(ts), ts >= shift_ts)
    else:
        tastes = preferences(served.dataset, rng, clients, preference)
        of = np.concatenate(owner)
        rows = np.empty((len(ts), len(served.dataset.names)))
        for c in range(clients):
            mine = of == c
            rows[mine] = served.dataset.sample(rng, len(ts[mine]), ts[mine] >= shift_ts, tastes[c])
    served.answer(rows, all_keys, ts)
    served.shift_ts = shift_ts
    return Benign(keys, keys[0], client_days, shift_ts, end)


def write_jsonl(lines: list[bytes], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for line in lines:
            f.write(line)
            f.write(b"\n")


@dataclass
class Verdict:
    """What Bulwark said about one key."""

    sent: int  # the key's queries in the stream
    flagged_after: int | None  # its own queries up to its first suspicious_client evidence
    detectors: list[str]
    linked: set[str]  # keys it shares fingerprints with, directly or through others
    direct: set[str] = field(default_factory=set)  # directly


def reference_events(served: LoggedModel, rng: np.random.Generator, n: int = 5000) -> list[bytes]:
    """What `bulwark reference set` would be given before launch: the model's answers on n
    rows of the data distribution before the shift (client `training`). Drawn like benign
    traffic, not the raw training rows: the smoothed bootstrap widens some features a
    little, which drift detectors would report against the raw rows."""
    training = LoggedModel(served.model, served.dataset)
    x = served.dataset.sample(rng, n, False)
    training.answer(x, ["training"] * n, T0 - DAY + np.arange(n, dtype=float))
    return training.events()[0]


def set_reference(path: Path, db_url: str) -> None:
    """`bulwark reference set clf FILE --db URL`, as an operator runs it before launch."""
    command = ["reference", "set", MODEL, str(path), "--db", db_url]
    subprocess.run([sys.executable, "-m", "agent", *command], check=True, capture_output=True)


def replay(path: Path, db_url: str) -> tuple[int, float]:
    """The file through Bulwark's pipeline, as `bulwark replay FILE --db URL` runs it, with
    default settings; returns (events, seconds)."""
    from agent.config import load_settings
    from agent.runtime.pipeline import Pipeline
    from agent.runtime.replay import REPLAY_CONSUMER, replay_batches
    from storage.db import Database
    from streams.files import FileSource

    settings = load_settings(None).model_copy(update={"database_url": db_url})
    database = Database(db_url)
    database.upgrade()
    source = FileSource(
        str(path), batch_size=settings.batch_size, max_record_bytes=settings.max_record_bytes
    )
    pipeline = Pipeline(settings, database, consumer=REPLAY_CONSUMER)
    result = replay_batches(pipeline, source.batches())
    return result.events, result.seconds


def judge(
    db_url: str, clients: np.ndarray
) -> tuple[dict[str, Verdict], list[tuple[str, str, float, float]]]:
    """Per key of the stream (`clients`: each line's key), its first suspicious_client
    evidence in its own queries; and the other incidents as (kind, subject, first_seen,
    last_seen)."""
    from sqlalchemy import select

    from storage.db import Database
    from storage.models import Evidence, Incident

    own = np.empty(len(clients), dtype=np.int64)  # line -> its key's queries so far
    seen: dict[str, int] = {}
    for i, key in enumerate(clients.tolist()):
        seen[key] = seen.get(key, 0) + 1
        own[i] = seen[key]
    verdicts = {key: Verdict(n, None, [], set()) for key, n in seen.items()}
    database = Database(db_url)
    with database.session() as session:
        rows = session.execute(
            select(Incident.subject, Evidence.offset, Evidence.details)
            .join(Evidence, Evidence.incident_id == Incident.id)
            .where(Incident.kind == "suspicious_client")
            .order_by(Evidence.offset)
        ).all()
        other = session.execute(
            select(Incident.kind, Incident.subject, Incident.first_seen, Incident.last_seen)
            .where(Incident.kind != "suspicious_client")
            .order_by(Incident.first_seen)
        ).all()
    for subject, offset, details in rows:
        verdict = verdicts.setdefault(subject, Verdict(0, None, [], set()))
        if verdict.flagged_after is None:
            verdict.flagged_after = int(own[offset]) if offset < len(own) else -1
            verdict.detectors = list(details.get("detectors_fired", []))
        verdict.direct.update(details.get("linked_clients") or [])
        verdict.linked.update(details.get("linked_clients") or [])
        verdict.linked.update(details.get("linked_group") or [])
    return verdicts, [tuple(row) for row in other]


def roots(db_url: str) -> list[tuple[str, str]]:
    """(kind, subject) of the incidents no other explains: what pages on-call, one per cause
    (agent/incidents/causes.py)."""
    from sqlalchemy import select

    from storage.db import Database
    from storage.models import Incident

    with Database(db_url).session() as session:
        rows = session.execute(
            select(Incident.kind, Incident.subject)
            .where(Incident.parent_id.is_(None))
            .order_by(Incident.first_seen)
        ).all()
    return [(kind, subject) for kind, subject in rows]


# --- attacks by the Adversarial Robustness Toolbox ------------------------------------------


@dataclass
class Attack:
    """One attacker: an ART attack run under `keys` from `start`, at most `budget` queries."""

    name: str  # how the bench reports it
    method: str  # the ART attack, a key of RUNNERS
    family: str  # "evasion", "synthetic extraction" or "natural extraction"
    keys: list[str]
    start: float  # event time of its first query
    budget: int
    gap: float = 3.0  # a bot's mean seconds between queries
    daily: float | None = None  # or an ordinary client's sessions at this many a day


def run_attack(served: LoggedModel, attack: Attack, rng: np.random.Generator) -> int:
    """Runs the ART attack named by `attack.name` against the logged model until it ends or
    spends its budget; returns the queries it sent."""
    # ART's modules are first imported with fixed seeds: what an import draws (the first time
    # in a process only) must not move the attacks' draws.
    with _seeded_random_states(np.random.default_rng(0)):
        importlib.import_module("art.attacks.evasion")
        importlib.import_module("art.attacks.extraction")
    # One draw of the bench's generator per attack, however many draws the attack makes: a
    # generator of its own for the rest.
    own = np.random.default_rng(int(rng.integers(2**63)))
    clock = Clock(own, attack.start, attack.gap, attack.daily)
    before = sum(len(t) for t in served.log.ts)
    runner = RUNNERS[attack.method]
    with contextlib.suppress(QueryBudgetSpent), _seeded_random_states(own):
        runner(served, attack, clock, own)
    return sum(len(t) for t in served.log.ts) - before


@contextlib.contextmanager
def _seeded_random_states(rng: np.random.Generator) -> Iterator[None]:
    """Every random draw of an ART attack follows from the bench's generator.

    - ART's HopSkipJump draws its starting points from an unseeded `np.random.RandomState()`
      (OS entropy), so a seed's stream differed from run to run; while an attack runs, a
      RandomState made without a seed takes one from the bench's generator.
    - Other attacks draw from numpy's global generator, and how many draws an attack makes
      there depends on the process's past (Sign-OPT's first run in a process drew a different
      number than a later one, with the same queries), so a seed built after another seed in
      one process gave other attack streams from the next attack on. Each attack starts the
      global generators (numpy's and Python's) from a seed of the bench's generator.
    """
    np.random.seed(int(rng.integers(2**32)))
    random.seed(int(rng.integers(2**32)))
    original = np.random.RandomState

    class Seeded(original):  # type: ignore[misc, valid-type]
        def __init__(self, seed: Any = None) -> None:
            super().__init__(int(rng.integers(2**32)) if seed is None else seed)

    np.random.RandomState = Seeded  # type: ignore[misc]
    try:
        yield
    finally:
        np.random.RandomState = original  # type: ignore[misc]


def _targets(served: LoggedModel, rng: np.random.Generator, n: int) -> np.ndarray:
    """The attacker's own inputs to perturb: real rows."""
    return served.dataset.sample(rng, n, False).astype(np.float32)


def _uniform(served: LoggedModel, rng: np.random.Generator, n: int) -> np.ndarray:
    d = served.dataset
    return rng.uniform(d.low, d.high, size=(n, len(d.names))).astype(np.float32)


def _repeat(generate: Callable[[np.ndarray], object], served: LoggedModel, rng) -> None:
    """Evasion attacks go after one input at a time until the budget is spent."""
    for _ in range(1000):
        generate(_targets(served, rng, 1))


def _hop_skip_jump(served: LoggedModel, attack: Attack, clock: Clock, rng) -> None:
    from art.attacks.evasion import HopSkipJump

    clf = served.art_classifier(attack.keys, clock, attack.budget)
    hsj = HopSkipJump(
        clf, targeted=False, max_iter=20, max_eval=100, init_eval=10, init_size=20, verbose=False
    )
    _repeat(hsj.generate, served, rng)


def _boundary(served: LoggedModel, attack: Attack, clock: Clock, rng) -> None:
    from art.attacks.evasion import BoundaryAttack

    clf = served.art_classifier(attack.keys, clock, attack.budget)
    boundary = BoundaryAttack(
        clf,
        targeted=False,
        max_iter=200,
        num_trial=10,
        sample_size=10,
        init_size=50,
        verbose=False,
    )
    _repeat(boundary.generate, served, rng)


def _zoo(served: LoggedModel, attack: Attack, clock: Clock, rng) -> None:
    from art.attacks.evasion import ZooAttack

    # ART's ZOO clips its coordinate batches with scalar bounds only.
    clf = served.art_classifier(attack.keys, clock, attack.budget, scalar_box=True)
    step = float(np.median(served.dataset.pool.std(axis=0)[served.dataset.pool.std(axis=0) > 0]))
    zoo = ZooAttack(
        clf,
        targeted=False,
        learning_rate=0.5 * step,
        max_iter=100,
        binary_search_steps=2,
        abort_early=False,
        use_resize=False,
        use_importance=False,
        nb_parallel=8,
        variable_h=0.05 * step,
        verbose=False,
    )
    _repeat(zoo.generate, served, rng)


def _simba(served: LoggedModel, attack: Attack, clock: Clock, rng) -> None:
    from art.attacks.evasion import SimBA

    clf = served.art_classifier(attack.keys, clock, attack.budget, image=True)
    step = float(np.median(served.dataset.pool.std(axis=0)[served.dataset.pool.std(axis=0) > 0]))
    simba = SimBA(clf, attack="px", max_iter=300, epsilon=0.5 * step, order="random", verbose=False)
    shape = served.dataset.image_shape
    _repeat(lambda x: simba.generate(x.reshape((len(x), *shape))), served, rng)


def _sign_opt(served: LoggedModel, attack: Attack, clock: Clock, rng) -> None:
    from art.attacks.evasion import SignOPTAttack

    clf = served.art_classifier(attack.keys, clock, attack.budget)
    sign_opt = SignOPTAttack(
        clf,
        targeted=False,
        num_trial=20,
        max_iter=50,
        query_limit=attack.budget,
        k=50,
        verbose=False,
    )
    _repeat(sign_opt.generate, served, rng)


def _thief() -> object:
    """The thieved classifier, a scikit-learn decision tree (fitted after the queries, so it
    does not change the stream). ART's extraction attacks fit it with neural-network
    arguments (batch_size, nb_epochs) that a scikit-learn fit does not take; this wrapper
    drops them (the copies ART's examples train are PyTorch/TensorFlow/Keras networks)."""
    from art.estimators.classification.scikitlearn import ScikitlearnClassifier
    from sklearn.tree import DecisionTreeClassifier

    class SklearnThief(ScikitlearnClassifier):  # type: ignore[misc]
        def fit(self, x: np.ndarray, y: np.ndarray, **kwargs: object) -> None:
            # A copy of answers that are all one class has nothing to fit (scikit-learn
            # refuses it); the bench measures the queries, not the copy.
            if len(np.unique(np.asarray(y).reshape(len(y), -1).argmax(axis=1))) > 1:
                super().fit(x, y)

    return SklearnThief(DecisionTreeClassifier())


def _copycat(served: LoggedModel, attack: Attack, clock: Clock, rng) -> None:
    from art.attacks.extraction import CopycatCNN

    clf = served.art_classifier(attack.keys, clock, attack.budget)
    copycat = CopycatCNN(clf, batch_size_query=16, nb_stolen=attack.budget)
    copycat.extract(_uniform(served, rng, attack.budget), thieved_classifier=_thief())


def _knockoff(served: LoggedModel, attack: Attack, clock: Clock, rng) -> None:
    from art.attacks.extraction import KnockoffNets

    clf = served.art_classifier(attack.keys, clock, attack.budget)
    knockoff = KnockoffNets(
        clf,
        batch_size_query=16,
        nb_stolen=attack.budget,
        sampling_strategy="random",
        verbose=False,
    )
    if attack.family == "natural extraction":
        shifted = clock.now >= served.shift_ts
        x = served.dataset.sample(rng, attack.budget, shifted).astype(np.float32)
    else:
        x = _uniform(served, rng, attack.budget)
    knockoff.extract(x, thieved_classifier=_thief())


RUNNERS: dict[str, Callable[[LoggedModel, Attack, Clock, np.random.Generator], None]] = {
    "HopSkipJump": _hop_skip_jump,
    "BoundaryAttack": _boundary,
    "ZOO": _zoo,
    "SimBA": _simba,
    "Sign-OPT": _sign_opt,
    "CopycatCNN": _copycat,
    "KnockoffNets": _knockoff,
}
