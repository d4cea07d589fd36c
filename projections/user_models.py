"""Projection "user_models": one row per user model (a LoRA), its verdict, and whether it was
deleted (the statements of every verified object: projections/verified_objects.py). The name
is projected as recorded: sealed under the user's data key (the API opens it), or plaintext
from before sealing."""

from __future__ import annotations

from domain.user_models import UserModel
from projections.verified_objects import VerifiedObjectsProjection, verified_object_statements


class UserModelsProjection(VerifiedObjectsProjection):
    name = "user_models"
    kind = UserModel
    tables = ("user_models",)
    event_statements = verified_object_statements(
        UserModel,
        table="user_models",
        id_column="model_id",
        requested=("user_id", "key", "name", "family", "size_bytes_max"),
        accepted_event="Verified",
        accepted=("sha256", "size_bytes", "tensors"),
    )
