"""A Qdrant subject selector as a structured filter, never filter syntax built from text, and never an
empty (match-all) one: the qdrant module's "Selectors" and "Type conversion".

``match`` becomes ``FieldCondition``s typed from the collection's payload index (an integer index takes a
canonical int64; no index matches the string or the integer form); ``ids_query``'s ids become a
``HasIdCondition`` (unsigned 64-bit integers or UUIDs). With both, a point goes if either selects it.
"""

from __future__ import annotations

import uuid
from typing import Any

from orchestrator.identifiers import Subject
from orchestrator.templates import fill
from workers.targets.base import PermanentError
from workers.targets.qdrant_config import QdrantConfig
from workers.targets.qdrant_errors import translate, translated
from workers.targets.selectors import canonical_integer

IDS_BATCH = 256  # rows of the ids query read per round
INT64 = (-(2**63), 2**63 - 1)
UINT64_MAX = 2**64 - 1


def subject_filter(client: Any, config: QdrantConfig, subject: Subject) -> Any | None:
    """The subject's filter, or None when it selects nothing. Never an empty (match-all) filter."""
    from qdrant_client import models

    schema = payload_schema(client, config.collection)
    parts: list[Any] = []
    if config.match is not None:
        values: dict[str, str] = fill(config.match, subject)
        conditions = []
        for field, raw in values.items():
            value = str(raw)  # a dataset's literal selector may hold an integer
            condition = field_condition(field, value, schema.get(field))
            if field not in schema and as_int64(value) is None:
                refuse_unconvertible(client, config.collection, field, condition)
            conditions.append(condition)
        assert conditions
        parts.append(models.Filter(must=conditions))
    # A dataset erasure replaces match with a literal one and carries no identifier for the ids query.
    if config.ids_query is not None and config.ids_query.parameters() <= set(subject):
        ids = query_ids(config, subject)
        if ids:
            parts.append(models.HasIdCondition(has_id=ids))
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0] if isinstance(parts[0], models.Filter) else models.Filter(must=parts)
    return models.Filter(should=parts)


def payload_schema(client: Any, collection: str) -> dict[str, Any]:
    """The collection's payload index schema; PermanentError when the collection does not exist."""
    try:
        info = client.get_collection(collection)
    except Exception as exc:
        raise translated(exc, "get_collection", collection) from None
    return dict(info.payload_schema or {})


def refuse_unconvertible(client: Any, collection: str, field: str, condition: Any) -> None:
    """No index says the field's type: a non-integer value that finds nothing in a field holding
    integers could not be converted, so it fails rather than report a silent zero."""
    from qdrant_client import models

    with translate("count", collection):
        if client.count(collection, count_filter=models.Filter(must=[condition]), exact=True).count:
            return
        has_value = models.Filter(must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=field))])
        sample, _ = client.scroll(collection, scroll_filter=has_value, limit=1, with_payload=True)
    if not sample:
        return
    stored = _payload_value(sample[0].payload, field)
    if isinstance(stored, list) and stored:
        stored = stored[0]
    if isinstance(stored, int) and not isinstance(stored, bool):
        raise PermanentError(
            f"Qdrant payload field {field!r} holds integers and the identifier is not a canonical int64: "
            "it cannot be converted, nothing selected"
        )


def query_ids(config: QdrantConfig, subject: Subject) -> list[int | str]:
    assert config.ids_query is not None
    ids: dict[int | str, None] = {}
    for value in config.ids_query.values(subject, IDS_BATCH, "ids_query"):
        ids.setdefault(point_id(value))
    return list(ids)


def as_int64(value: str) -> int | None:
    """The integer a canonical decimal string spells, if it fits Qdrant's int64; else None."""
    number = canonical_integer(value)
    return number if number is not None and INT64[0] <= number <= INT64[1] else None


def point_id(value: Any) -> int | str:
    """A point id from the application's database: an unsigned 64-bit integer or a UUID."""
    if isinstance(value, bool):
        raise PermanentError("ids_query returned a value that is not a point id")
    if isinstance(value, int):
        if 0 <= value <= UINT64_MAX:
            return value
        raise PermanentError("ids_query returned a value that is not a point id")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        number = canonical_integer(value)
        if number is not None and 0 <= number <= UINT64_MAX:
            return number
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise PermanentError("ids_query returned a value that is not a point id")


def _schema_type(info: Any) -> str | None:
    """The data type of a payload_schema entry (PayloadIndexInfo or a bare PayloadSchemaType), as text."""
    if info is None:
        return None
    data_type = getattr(info, "data_type", info)
    return str(getattr(data_type, "value", data_type))


def field_condition(field: str, value: str, schema: Any = None) -> Any:
    """The condition matching ``field == value`` in the type the store uses for the field.

    ``schema`` is the collection's payload_schema entry for the field, or None when it has no index.
    """
    from qdrant_client import models

    def equals(v: str | int) -> Any:
        return models.FieldCondition(key=field, match=models.MatchValue(value=v))

    data_type = _schema_type(schema)
    number = as_int64(value)
    if data_type == "integer":
        if number is None:
            raise PermanentError(
                f"Qdrant payload field {field!r} is indexed as integer and the identifier is not a "
                "canonical int64: nothing selected"
            )
        return equals(number)
    if data_type in ("keyword", "uuid"):
        return equals(value)
    if data_type is not None:
        raise PermanentError(
            f"Qdrant payload field {field!r} is indexed as {data_type}; match needs a keyword, uuid or "
            "integer field"
        )
    if number is None:
        return equals(value)
    return models.Filter(should=[equals(value), equals(number)])


def _payload_value(payload: dict[str, Any] | None, field: str) -> Any:
    value: Any = payload or {}
    if field in value:
        return value[field]
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value

