"""Uploads to the Hugging Face Hub: an export folder as a model repo (`push`), a folder written by
`fgvc_zoo.demo.write_space` as a gradio Space (`push_space`). Both go through `upload_folder`, so that the token
check and what is uploaded (an allow-list: never a pickle, never a training checkpoint) are written once.
"""

import os
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi, get_token

from ..errors import UsageError
from ..models.hub_io import WEIGHTS_NAME
from .folder import CARD_NAME, CONFIG_NAME, PUSHED_FILES, check_export_folder, write_card

__all__ = [
    'SPACE_MODEL_DIR',
    'SPACE_EXAMPLES_DIR',
    'SPACE_WHEELS_DIR',
    'SPACE_FILES',
    'upload_folder',
    'push',
    'push_space',
]

SPACE_MODEL_DIR = 'model'
SPACE_EXAMPLES_DIR = 'examples'
SPACE_WHEELS_DIR = 'wheels'  # the fgvc-zoo wheel the Space's requirements.txt installs (no index needs to have it)
# What `fgvc-zoo push --space` uploads: the app, its pins and card, the examples, the weights (never a pickle).
SPACE_FILES = (
    'app.py',
    'requirements.txt',
    CARD_NAME,
    f'{SPACE_EXAMPLES_DIR}/*',
    f'{SPACE_WHEELS_DIR}/*.whl',
    f'{SPACE_MODEL_DIR}/{CONFIG_NAME}',
    f'{SPACE_MODEL_DIR}/{WEIGHTS_NAME}',
)


def upload_folder(
    folder: Path,
    repo_id: str,
    allow_patterns: Sequence[str],
    private: bool = False,
    token: str | None = None,
    repo_type: str = 'model',
    commit_message: str = 'Upload fgvc_zoo model',
) -> str:
    """Create `repo_id` if needed and upload the files of `folder` that match `allow_patterns`; returns its URL."""
    api = HfApi(token=_token(folder, repo_id, token, repo_type))
    space_sdk = 'gradio' if repo_type == 'space' else None
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, space_sdk=space_sdk)
    api.upload_folder(
        repo_id=repo_id,
        repo_type=repo_type,
        folder_path=folder,
        allow_patterns=list(allow_patterns),
        commit_message=commit_message,
    )
    return str(url)


def _token(folder: Path, repo_id: str, token: str | None, repo_type: str) -> str:
    """`token`, else the logged-in one; without any, say how to get one before anything is written."""
    token = token or get_token()
    if not token:
        kind = 'the Space ' if repo_type == 'space' else ''
        raise PermissionError(
            f"No Hugging Face token to push '{folder}' to {kind}'{repo_id}': pass --token (or token=), set "
            f"HF_TOKEN, or run `hf auth login`. The token needs write access to '{repo_id.split('/')[0]}'."
        )
    return token


def push(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = 'Upload fgvc_zoo model',
) -> str:
    """Create `repo_id` if needed and upload the export in `folder` (safetensors, config, card, results only)."""
    folder = Path(folder)
    check_export_folder(folder)
    token = _token(folder, repo_id, token, 'model')
    write_card(folder, repo_id=repo_id)
    return upload_folder(folder, repo_id, PUSHED_FILES, private, token, commit_message=commit_message)


def push_space(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create the Space `repo_id` (sdk gradio) if needed and upload the folder `write_space` wrote."""
    folder = Path(folder)
    required = ('app.py', 'requirements.txt', CARD_NAME, f'{SPACE_MODEL_DIR}/{WEIGHTS_NAME}')
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise UsageError(
            f'{folder} is not a Space folder (no {", ".join(missing)}): write one with `fgvc-zoo space DIR {folder}`.'
        )
    return upload_folder(
        folder, repo_id, SPACE_FILES, private, token, repo_type='space', commit_message='Upload fgvc_zoo demo Space'
    )
