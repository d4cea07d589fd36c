"""Images: list, read (with presigned URLs), delete (frees storage quota)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response, status

from api import problems as p
from api.deps import CurrentUser, Paging, ServicesDep, consistent, rate_limit
from api.problems import ProblemError, problem_responses
from api.routers.jobs import bad_query
from api.schemas import ImageView, Page
from api.services import Services, now
from read_models import models as rm
from read_models import queries

router = APIRouter(prefix="/v1/images", tags=["images"])

URL_TTL = timedelta(hours=1)
ImageName = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")]
ERRORS = (401, 403, 429, 503)


def _view(svc: Services, image: rm.Image) -> ImageView:
    # Presigning is a local HMAC, no request to S3.
    def sign(key: str) -> str:
        return str(
            svc.s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": svc.settings.s3_bucket, "Key": key},
                ExpiresIn=int(URL_TTL.total_seconds()),
            )
        )

    return ImageView(
        name=image.name,
        job_id=image.job_id,
        index=image.index,
        size_bytes=image.size_bytes,
        width=image.width,
        height=image.height,
        created_at=image.created_at,
        url=sign(image.key),
        thumbnail_url=sign(image.thumbnail_key),
        urls_expire_at=now() + URL_TTL,
    )


def _not_found(name: str) -> ProblemError:
    return ProblemError(
        p.NOT_FOUND, f"You have no image {name!r}; list your images with GET /v1/images."
    )


@router.get(
    "",
    response_model=Page[ImageView],
    summary="List your images, newest first",
    responses=problem_responses(*ERRORS, 422),
    dependencies=[Depends(rate_limit("query")), Depends(consistent("jobs"))],
)
async def list_images(principal: CurrentUser, svc: ServicesDep, paging: Paging) -> Page[ImageView]:
    try:
        page = await queries.list_images(
            svc.pool, principal.user_id, cursor=paging.cursor, limit=paging.limit
        )
    except ValueError as e:
        raise bad_query(e) from None
    return Page[ImageView](items=[_view(svc, i) for i in page.items], next_cursor=page.next_cursor)


@router.get(
    "/{image_name}",
    response_model=ImageView,
    summary="One of your images, with presigned URLs",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("query")), Depends(consistent("jobs"))],
)
async def get_image(image_name: ImageName, principal: CurrentUser, svc: ServicesDep) -> ImageView:
    image = await queries.get_image(svc.pool, principal.user_id, image_name)
    if image is None:
        raise _not_found(image_name)
    return _view(svc, image)


@router.delete(
    "/{image_name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete one of your images (frees storage quota)",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def delete_image(image_name: ImageName, principal: CurrentUser, svc: ServicesDep) -> Response:
    # The row is marked inside a transaction that commits only after S3 deleted the objects:
    # a failed S3 call leaves the image listed, so the client can simply retry.
    async with svc.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE images SET deleted_at = $3 WHERE user_id = $1 AND name = $2"
            " AND deleted_at IS NULL RETURNING job_id, key, thumbnail_key",
            principal.user_id,
            image_name,
            now(),
        )
        if row is None:
            raise _not_found(image_name)
        await svc.blocking(
            svc.s3.delete_objects,
            Bucket=svc.settings.s3_bucket,
            Delete={"Objects": [{"Key": row["key"]}, {"Key": row["thumbnail_key"]}]},
        )
    await svc.job_cache.delete(str(row["job_id"]))
    svc.storage.drop(principal.user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
