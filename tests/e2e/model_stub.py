"""A stand-in for an OpenAI-compatible model server that records what reaches it."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ModelStub:
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []  # headers of every request, names lower-cased
        self.paths: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._reply({"object": "list", "data": [{"id": "llama-3", "object": "model"}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self._reply(
                    {
                        "id": "chatcmpl-stub",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "llama-3",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "Hello from the edge"},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5},
                    }
                )

            def _reply(self, payload: dict[str, Any]) -> None:
                stub.seen.append({k.lower(): v for k, v in self.headers.items()})
                stub.paths.append(self.path)
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
