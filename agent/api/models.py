"""/api/models: per-model totals, a column's distribution against the reference, and the
performance history."""

from typing import Annotated, Any, Literal

from litestar import get
from litestar.exceptions import NotFoundException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery, QueryParameter

from agent import distributions
from agent.api.params import event_time, text
from agent.api.shapes import ModelList, ModelSummary, PerformancePage
from agent.samples import Sample
from storage.queries import Repository


def model_routes(repo: Repository) -> list[HTTPRouteHandler]:
    @get("/api/models", sync_to_thread=True)
    def models() -> ModelList:
        """Per model: open incidents by kind, last event time, events seen, dead letters."""
        summary: dict[str, ModelSummary] = {}

        def entry(model: str) -> ModelSummary:
            return summary.setdefault(
                model,
                {
                    "model": model,
                    "open_incidents": {},
                    "last_event_ts": None,
                    "events_seen": {"predictions": 0, "labels": 0},
                    "dead_letters": 0,
                },
            )

        for row in repo.model_stats():
            item = entry(row.model)
            item["last_event_ts"] = row.last_event_ts
            item["events_seen"] = {"predictions": row.predictions, "labels": row.labels}
            item["dead_letters"] = row.dead_letters
        for model, kind, _severity, count in repo.open_incident_counts():
            kinds = entry(model)["open_incidents"]
            kinds[kind] = kinds.get(kind, 0) + count
        return {"items": [summary[m] for m in sorted(summary)]}

    @get("/api/models/{model:str}/distribution", sync_to_thread=True)
    def distribution(
        model: FromPath[str],
        feature: Annotated[
            str | None, QueryParameter(description="a feature of the model's events")
        ] = None,
        output: Annotated[
            Literal["prediction", "class_proportions", "score"] | None,
            QueryParameter(description="or one of the model's outputs"),
        ] = None,
    ) -> dict[str, Any]:
        """One column's distribution, the stored reference against the recent window (shares
        on common bins or categories, summaries), and its history over the recent window."""
        if (feature is None) == (output is None):
            raise ValidationException(detail="give exactly one of feature and output")
        name = text("model", model)
        assert name is not None
        recent = Sample.concat(
            [Sample.decode(r.sample) for r in repo.recent_samples(name)]
        ).sorted_by_time()
        if not len(recent):
            raise NotFoundException(detail=f"no recent predictions of model {model!r} stored")
        versions = {v for v in recent.model_versions if v is not None}
        row = repo.find_reference(name, versions.pop() if len(versions) == 1 else None)
        if row is None:
            raise NotFoundException(detail=f"model {model!r} has no reference yet")
        column = text("feature", feature) if feature is not None else output
        assert column is not None
        try:
            found = distributions.distribution(
                Sample.decode(row.sample), recent, column, output=output is not None
            )
        except distributions.NoColumn as exc:
            raise NotFoundException(detail=str(exc)) from None
        return {"model": name, "reference_id": row.id, **found}

    @get("/api/models/{model:str}/performance", sync_to_thread=True)
    def performance(
        model: FromPath[str],
        metric: FromQuery[str | None] = None,
        since: Annotated[
            str | None, QueryParameter(description="windows ending at or after (event time)")
        ] = None,
        until: Annotated[
            str | None, QueryParameter(description="windows starting at or before (event time)")
        ] = None,
    ) -> PerformancePage:
        """The model's measured and estimated metrics per event-time window, oldest first,
        with confidence intervals where one partition holds the whole window."""
        rows = repo.performance_history(
            text("model", model) or "",
            metric=text("metric", metric),
            since=event_time("since", since),
            until=event_time("until", until),
        )
        return {"items": rows}  # type: ignore[typeddict-item]

    return [models, distribution, performance]
