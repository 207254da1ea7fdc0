"""A minimal Hugging Face Hub for tests: the endpoints `HfApi.create_repo`, `upload_folder`/`create_commit` (model
and Space repos) and `hf_hub_download` call, served on 127.0.0.1 from memory.

Written by hand because huggingface_hub ships no test server. Every file is stored as a regular git blob (the
preupload answer is always `regular`, so no LFS or Xet transfer is involved), and every request is recorded so a
test can check what the client sent (token, visibility, file paths).
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

REPO = r'(?P<repo>[\w.-]+/[\w.-]+)'


@dataclass
class Repo:
    private: bool
    kind: str = 'model'  # or 'space'
    files: dict[str, bytes] = field(default_factory=dict)
    commit: str = '0' * 40


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    body: bytes


class HubServer:
    """`with HubServer() as hub:` serves `hub.endpoint` until the block ends; `hub.repos`, `hub.requests` record."""

    def __init__(self, token: str = 'hf_test_token'):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self._server = ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
        self.endpoint = f'http://127.0.0.1:{self._server.server_address[1]}'
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> 'HubServer':
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_repo(self, repo_id: str, files: dict[str, bytes], private: bool = False, kind: str = 'model') -> None:
        self.repos[repo_id] = Repo(private=private, kind=kind)
        self._commit(repo_id, files)

    def _commit(self, repo_id: str, files: dict[str, bytes]) -> str:
        repo = self.repos[repo_id]
        repo.files.update(files)
        digest = hashlib.sha1(repo.commit.encode())
        for path in sorted(files):
            digest.update(path.encode() + files[path])
        repo.commit = digest.hexdigest()
        return repo.commit

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _reply(self, status: int, body: bytes = b'', headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(body)

            def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
                headers = {'Content-Type': 'application/json', **(headers or {})}
                self._reply(status, json.dumps(payload).encode(), headers)

            def _error(self, status: int, code: str) -> None:
                self._json(status, {'error': code}, {'X-Error-Code': code, 'X-Error-Message': code})

            def _record(self) -> bytes:
                length = int(self.headers.get('Content-Length') or 0)
                body = self.rfile.read(length) if length else b''
                hub.requests.append(Request(self.command, self.path, self.headers.get('Authorization'), body))
                return body

            def _authorised(self) -> bool:
                return self.headers.get('Authorization') == f'Bearer {hub.token}'

            def _repo(self, repo_id: str) -> Repo | None:
                repo = hub.repos.get(repo_id)
                if repo is None or (repo.private and not self._authorised()):
                    self._error(404, 'RepoNotFound')
                    return None
                return repo

            def do_POST(self) -> None:
                body = self._record()
                path = self.path.split('?')[0]
                if not self._authorised():
                    return self._error(401, 'Unauthorized')
                if path == '/api/repos/create':
                    payload = json.loads(body)
                    repo_id = f'{payload["organization"]}/{payload["name"]}'
                    if repo_id in hub.repos:
                        return self._json(409, {'error': 'You already created this model repo', 'url': repo_id})
                    kind = payload.get('type', 'model')
                    hub.add_repo(repo_id, {}, private=payload.get('visibility') == 'private', kind=kind)
                    return self._json(200, {'url': f'{hub.endpoint}/{repo_id}', 'name': repo_id})
                if path == '/api/validate-yaml':
                    return self._validate_yaml(json.loads(body)['content'])
                match = re.fullmatch(
                    rf'/api/(?P<kind>model|space)s/{REPO}/(?P<op>preupload|commit)/(?P<rev>[^/]+)', path
                )
                if match is None or self._repo(match['repo']) is None:
                    return None if match else self._error(404, 'NotFound')
                if hub.repos[match['repo']].kind != match['kind']:
                    return self._error(404, 'RepoNotFound')  # a model and a Space are different repos
                if match['op'] == 'preupload':
                    files = json.loads(body)['files']
                    modes = [{'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False} for f in files]
                    return self._json(200, {'files': modes})
                added = {}
                for line in body.splitlines():
                    item = json.loads(line)
                    if item['key'] == 'file':
                        added[item['value']['path']] = base64.b64decode(item['value']['content'])
                    elif item['key'] != 'header':
                        return self._json(400, {'error': f'this test Hub takes regular files only, not {item["key"]}'})
                commit = hub._commit(match['repo'], added)
                self._json(200, {'commitUrl': f'{hub.endpoint}/{match["repo"]}/commit/{commit}', 'commitOid': commit})

            def _validate_yaml(self, card: str) -> None:
                # The real Hub rejects a README whose front matter is not a YAML mapping.
                parts = card.split('---\n', 2)
                front_matter = yaml.safe_load(parts[1]) if card.startswith('---\n') and len(parts) == 3 else None
                if not isinstance(front_matter, dict):
                    return self._json(400, {'errors': [{'message': 'README.md has no YAML front matter'}]})
                self._json(200, {'warnings': []})

            def do_GET(self) -> None:
                self._record()
                path = self.path.split('?')[0]
                # Repo info; huggingface_hub before 1.0 also asks it of a Space before an upload (xetEnabled).
                info = re.fullmatch(rf'/api/(?P<kind>model|space)s/{REPO}(?:/revision/[^/]+)?', path)
                if info is not None:
                    repo = self._repo(info['repo'])
                    if repo is not None and repo.kind != info['kind']:
                        return self._error(404, 'RepoNotFound')
                    if repo is not None:
                        self._json(
                            200,
                            {
                                'id': info['repo'],
                                'sha': repo.commit,
                                'private': repo.private,
                                'siblings': [{'rfilename': name} for name in sorted(repo.files)],
                            },
                        )
                    return
                self._resolve(path)

            def do_HEAD(self) -> None:
                self._record()
                self._resolve(self.path.split('?')[0])

            def _resolve(self, path: str) -> None:
                match = re.fullmatch(rf'/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)', path)
                if match is None:
                    return self._error(404, 'NotFound')
                repo = self._repo(match['repo'])
                if repo is None:
                    return None
                content = repo.files.get(match['file'])
                if content is None:
                    return self._error(404, 'EntryNotFound')
                blob = hashlib.sha1(b'blob %d\0' % len(content) + content).hexdigest()
                self._reply(200, content, {'X-Repo-Commit': repo.commit, 'ETag': f'"{blob}"'})

        return Handler


def served_files(hub: HubServer, repo_id: str) -> tuple[str, ...]:
    """The file names a repo on the test Hub holds."""
    return tuple(sorted(hub.repos[repo_id].files))
