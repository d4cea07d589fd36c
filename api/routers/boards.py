"""Boards: a user's named collections of images (InvokeAI's boards).

Commands go to the ``Board`` aggregate (domain/boards.py); reads come from the boards read
model (read_models/boards.py). An image is on at most one board: putting it on another moves
it. Deleting a board leaves its images, on no board. Another user's board or image is a 404.

A board's name is sealed under the user's data key (domain/boards.py): the events and the read
model hold it sealed, and every answer opens it with the key as it is then, so after the user's
erasure it reads "[erased]".
"""

from __future__ import annotations

import uuid
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import AwareDatetime, Field

from api import problems as p
from api.deps import CurrentUser, IdempotencyKey, Paging, ServicesDep, consistent, rate_limit
from api.positions import no_content, no_content_response
from api.problems import ProblemError, problem_responses
from api.routers.jobs import bad_query
from api.schemas import Page, Strict, View
from api.services import Services, now
from domain.boards import BOARD_IMAGES_MAX, BOARD_NAME_CHARS_MAX, BOARD_NAME_FIELD, Board
from domain.errors import NotFound
from infra.personal_keys import Opener
from read_models import boards as rm

router = APIRouter(prefix="/v1/boards", tags=["boards"])

ERRORS = (401, 403, 429, 503)
BoardId = Annotated[UUID, Path(description="the board_id POST /v1/boards answered")]
ImageName = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")]
# Not blank, and no NUL (PostgreSQL text cannot hold it: the projection could not store it).
BoardName = Annotated[
    str,
    Field(min_length=1, max_length=BOARD_NAME_CHARS_MAX, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$"),
]


class BoardRequest(Strict):
    name: BoardName


class BoardPatch(Strict):
    name: BoardName | None = Field(None, description="the new name; absent: unchanged")


class BoardView(View):
    board_id: UUID
    name: str
    image_count: int = Field(description=f"at most {BOARD_IMAGES_MAX}")
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    position: int | None = Field(None, description="store position of the command, if any")


def opened_name(opener: Opener, name: str) -> str:
    """A board's name as stored, opened: plaintext, or ERASED once its key is gone (also
    under a later key: the seal names its key's generation, infra/personal_keys.py)."""
    return opener.open(BOARD_NAME_FIELD, name)


async def _opener(svc: Services, user_id: str) -> Opener:
    return await svc.personal_keys.opener(user_id)


def _not_found(board_id: UUID) -> ProblemError:
    return ProblemError(
        p.NOT_FOUND, f"You have no board {board_id}; list your boards with GET /v1/boards."
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BoardView,
    summary="Create a board",
    description="With an `Idempotency-Key`, the same request again answers the same board "
    "(`Idempotent-Replayed: true`); the key with another name is a 409.",
    responses=problem_responses(*ERRORS, 409, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def create_board(
    body: BoardRequest,
    principal: CurrentUser,
    svc: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> BoardView:
    key = await svc.personal_keys.key_for(principal.user_id)  # the event records it sealed
    result = await svc.command(
        svc.application.create_board,
        principal.user_id,
        request_key=idempotency_key or uuid.uuid4().hex,
        name=body.name,
        at=now(),
        sealer=key,
    )
    response.headers["Location"] = f"/v1/boards/{result.board_id}"
    if not result.changed:
        response.headers["Idempotent-Replayed"] = "true"
    return BoardView(
        board_id=result.board_id,
        name=opened_name(key, result.name),
        image_count=0,
        position=result.position,
    )


@router.get(
    "",
    response_model=Page[BoardView],
    summary="List your boards, newest first",
    responses=problem_responses(*ERRORS, 422),
    dependencies=[Depends(rate_limit("query")), Depends(consistent("boards"))],
)
async def list_boards(principal: CurrentUser, svc: ServicesDep, paging: Paging) -> Page[BoardView]:
    try:
        page = await rm.list_boards(
            svc.pool, principal.user_id, cursor=paging.cursor, limit=paging.limit
        )
    except ValueError as e:
        raise bad_query(e) from None
    opener = await _opener(svc, principal.user_id)
    items = [BoardView.model_validate(b) for b in page.items]
    for item in items:  # a page: at most its limit
        item.name = opened_name(opener, item.name)
    return Page[BoardView](items=items, next_cursor=page.next_cursor)


@router.get(
    "/{board_id}",
    response_model=BoardView,
    summary="One of your boards",
    description="Its images: GET /v1/images?board_id=...",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("query"))],
)
async def get_board(board_id: BoardId, principal: CurrentUser, svc: ServicesDep) -> BoardView:
    # From the event store, not the read model: a board just deleted is gone at once.
    try:
        board = await svc.command(svc.application.board, principal.user_id, board_id)
    except NotFound:
        raise _not_found(board_id) from None
    return _aggregate_view(board, await _opener(svc, principal.user_id))


def _aggregate_view(board: Board, opener: Opener, position: int | None = None) -> BoardView:
    return BoardView(
        board_id=board.id,
        name=opened_name(opener, board.name),
        image_count=len(board.images),
        created_at=board.created_at,
        position=position,
    )


@router.patch(
    "/{board_id}",
    response_model=BoardView,
    summary="Rename one of your boards",
    description="The answer is the board as the command left it (`position`: for X-Min-Position).",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def rename_board(
    board_id: BoardId, body: BoardPatch, principal: CurrentUser, svc: ServicesDep
) -> BoardView:
    user, app = principal.user_id, svc.application
    try:
        if body.name is None:
            board = await svc.command(app.board, user, board_id)
            return _aggregate_view(board, await _opener(svc, user))
        key = await svc.personal_keys.key_for(user)  # the new name is recorded sealed
        renamed = await svc.command(
            app.rename_board, user, board_id, name=body.name, at=now(), sealer=key
        )
        board = await svc.command(app.board, user, board_id)
    except NotFound:
        raise _not_found(board_id) from None
    return _aggregate_view(board, key, renamed.position)


@router.delete(
    "/{board_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete one of your boards (its images stay, on no board)",
    description="Recorded as `Board.Deleted`; deleting it again is a 404.",
    responses={**no_content_response("Done"), **problem_responses(*ERRORS, 404, 422)},
    dependencies=[Depends(rate_limit("command"))],
)
async def delete_board(board_id: BoardId, principal: CurrentUser, svc: ServicesDep) -> Response:
    try:
        result = await svc.command(
            svc.application.delete_board, principal.user_id, board_id, at=now()
        )
    except NotFound:
        raise _not_found(board_id) from None
    return no_content(result.position)


@router.put(
    "/{board_id}/images/{image_name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Put one of your images on the board (moving it off any other board)",
    description="One of your images: a job's, or a completed upload (named by its upload id). "
    f"A board holds at most {BOARD_IMAGES_MAX} images (409 when full). Putting it there again "
    "changes nothing. Another user's image, a deleted or unknown one: 404.",
    responses={**no_content_response("Done"), **problem_responses(*ERRORS, 404, 409, 422)},
    dependencies=[Depends(rate_limit("command"))],
)
async def add_image(
    board_id: BoardId, image_name: ImageName, principal: CurrentUser, svc: ServicesDep
) -> Response:
    result = await svc.command(
        svc.application.add_board_image,
        principal.user_id,
        board_id,
        image_name=image_name,
        at=now(),
    )
    return no_content(result.position)


@router.delete(
    "/{board_id}/images/{image_name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Take an image off the board (it stays, on no board)",
    description="404 when the image is not on this board.",
    responses={**no_content_response("Done"), **problem_responses(*ERRORS, 404, 422)},
    dependencies=[Depends(rate_limit("command"))],
)
async def remove_image(
    board_id: BoardId, image_name: ImageName, principal: CurrentUser, svc: ServicesDep
) -> Response:
    result = await svc.command(
        svc.application.remove_board_image,
        principal.user_id,
        board_id,
        image_name=image_name,
        at=now(),
    )
    return no_content(result.position)
