"""web_fetch and web_search: run in the worker, outside the sandbox, with their own domain rules.

Both honour the tool's `allowed_domains` / `blocked_domains` (a domain also covers its subdomains). web_fetch
also obeys the environment's `limited` networking (the same decision as the egress proxy) and never fetches
private, loopback or metadata addresses (outbound/guard.py) unless GALLEY_OUTBOUND_ALLOW_PRIVATE is set
(tests, or a deliberately internal deployment). web_search goes through a provider interface; the one
adapter speaks SearXNG's JSON API.
"""

import base64
import codecs
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, Protocol

import httpx2
from django.conf import settings
from django.db.models import F

from outbound.guard import AddressRefused, http_client
from sessions.models import Session

MAX_FETCH_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_CHARS = 100_000
FETCH_TIMEOUT = 30.0
MAX_REDIRECTS = 5
USER_AGENT = "Galley-web_fetch/1.0"


def _outcome(text: str, is_error: bool = False) -> Any:
    from sandboxes.toolset import ToolOutcome

    return ToolOutcome(content=[{"type": "text", "text": text or "(empty)"}], is_error=is_error)


def domain_matches(host: str, domain: str) -> bool:
    host, domain = host.lower().rstrip("."), domain.lower().rstrip(".").removeprefix("*.")
    return host == domain or host.endswith("." + domain)


def domain_allowed(host: str, config: dict[str, Any]) -> tuple[bool, str]:
    allowed = config.get("allowed_domains")
    blocked = config.get("blocked_domains")
    if allowed and not any(domain_matches(host, d) for d in allowed):
        return False, f"{host} is not in this tool's allowed_domains"
    if blocked and any(domain_matches(host, d) for d in blocked):
        return False, f"{host} is in this tool's blocked_domains"
    return True, ""


class _TextExtractor(HTMLParser):
    SKIP = {"script", "style", "noscript", "template", "svg", "head"}
    BLOCK = {
        "p",
        "div",
        "br",
        "li",
        "tr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "section",
        "article",
        "pre",
        "blockquote",
        "table",
        "ul",
        "ol",
        "header",
        "footer",
        "title",
        "hr",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in self.SKIP:
            self._skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in self.SKIP and self._skip:
            self._skip -= 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).split("\n")]
    text = "\n".join(line for line in lines if line)
    return " ".join(parser.title.split()), text


def _fetch_hop(client: Any, url: str) -> tuple[int, str | None, bytes, str, str]:
    """One request through the outbound guard: (status, Location, body, content type, charset)."""
    with client.stream("GET", url, headers={"User-Agent": USER_AGENT, "Accept": "*/*"}) as response:
        location = response.headers.get("location")
        body = b""
        if response.status_code < 300 or response.status_code >= 400:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_FETCH_BYTES:
                    break
        content_type, _, params = response.headers.get("content-type", "").partition(";")
        charset = "utf-8"
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                try:
                    charset = codecs.lookup(value.strip().strip('"')).name
                except LookupError:
                    pass
        return response.status_code, location, body, content_type.strip().lower(), charset


def web_fetch(*, session: Session, tool_input: dict[str, Any], config: dict[str, Any]) -> Any:
    from sandboxes.egress import egress_decide, egress_rules
    from sandboxes.services import environment_networking

    url = tool_input.get("url")
    if not isinstance(url, str) or not url:
        return _outcome("web_fetch: url is required", True)
    networking = environment_networking(session)
    rules = egress_rules(networking=networking, agent_snapshot=session.agent_snapshot or {})
    Session.objects.filter(pk=session.pk).update(web_fetch_requests=F("web_fetch_requests") + 1)
    # Each hop connects to the address the guard checked for it, never to a second lookup's answer.
    with http_client(allow_private=settings.GALLEY_OUTBOUND_ALLOW_PRIVATE, timeout=FETCH_TIMEOUT) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return _outcome(
                    f"web_fetch: only http and https URLs can be fetched (got {url[:200]!r})", True
                )
            host = parts.hostname
            ok, reason = domain_allowed(host, config)
            if ok and networking.get("type") == "limited":
                ok, reason = egress_decide(host, rules)
            if not ok:
                return _outcome(f"web_fetch: refused to fetch {url[:200]}: {reason}", True)
            try:
                status, location, body, content_type, charset = _fetch_hop(client, url)
            except AddressRefused as exc:
                return _outcome(f"web_fetch: refused to fetch {url[:200]}: {exc.reason}", True)
            except (httpx2.HTTPError, OSError, ValueError) as exc:
                return _outcome(f"web_fetch: could not fetch {url[:200]}: {exc}", True)
            if status in (301, 302, 303, 307, 308) and location:
                url = urllib.parse.urljoin(url, location)
                continue
            if status >= 400:
                return _outcome(f"web_fetch: {url[:200]} answered HTTP {status}", True)
            return _render(url, body, content_type or "application/octet-stream", charset, config)
    return _outcome(f"web_fetch: too many redirects fetching {url[:200]}", True)


def _render(url: str, body: bytes, content_type: str, charset: str, config: dict[str, Any]) -> Any:
    from sandboxes.toolset import ToolOutcome

    if len(body) > MAX_FETCH_BYTES:
        return _outcome(f"web_fetch: {url[:200]} is larger than {MAX_FETCH_BYTES} bytes", True)
    if content_type == "application/pdf":
        return ToolOutcome(
            content=[
                {"type": "text", "text": f"Fetched {url}"},
                {
                    "type": "document",
                    "source": {
                        "type": "base64",
                        "media_type": "application/pdf",
                        "data": base64.standard_b64encode(body).decode(),
                    },
                },
            ],
            is_error=False,
        )
    if not (
        content_type.startswith("text/")
        or content_type in ("application/json", "application/xml", "application/xhtml+xml")
    ):
        return _outcome(f"web_fetch: {url[:200]} is {content_type}, which cannot be shown as text", True)
    text = body.decode(charset, errors="replace")
    title = ""
    if content_type in ("text/html", "application/xhtml+xml"):
        title, text = html_to_text(text)
    max_tokens = config.get("max_content_tokens")
    limit = int(max_tokens) * 4 if isinstance(max_tokens, int) and max_tokens > 0 else DEFAULT_MAX_CHARS
    if len(text) > limit:
        text = text[:limit] + f"\n[content truncated at {limit} characters]"
    header = f"URL: {url}\n" + (f"Title: {title}\n" if title else "")
    return _outcome(header + "\n" + text)


# --- web_search ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str


class SearchProvider(Protocol):
    def search(self, query: str, *, user_location: dict[str, Any] | None) -> list[SearchResult]: ...


class SearxngProvider:
    """A SearXNG instance with `search.formats: [json]` enabled."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def search(self, query: str, *, user_location: dict[str, Any] | None) -> list[SearchResult]:
        params = {"q": query, "format": "json"}
        if user_location and user_location.get("country"):
            params["language"] = f"all-{str(user_location['country']).upper()}"
        url = f"{self.base_url}/search?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(
            url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
            data = json.loads(response.read(MAX_FETCH_BYTES))
        return [
            SearchResult(
                title=str(r.get("title") or ""),
                url=str(r.get("url") or ""),
                snippet=str(r.get("content") or ""),
            )
            for r in data.get("results") or []
            if isinstance(r, dict) and r.get("url")
        ]


def search_provider() -> SearchProvider | None:
    if settings.GALLEY_SEARXNG_URL:
        return SearxngProvider(settings.GALLEY_SEARXNG_URL)
    return None


def web_search(*, session: Session, tool_input: dict[str, Any], config: dict[str, Any]) -> Any:
    query = tool_input.get("query")
    if not isinstance(query, str) or not query.strip():
        return _outcome("web_search: query is required", True)
    provider = search_provider()
    if provider is None:
        return _outcome(
            "web_search: no search provider is configured on this server (an administrator can set "
            "GALLEY_SEARXNG_URL to a SearXNG instance)",
            True,
        )
    Session.objects.filter(pk=session.pk).update(web_search_requests=F("web_search_requests") + 1)
    try:
        results = provider.search(query, user_location=config.get("user_location"))
    except (OSError, ValueError, urllib.error.URLError) as exc:
        return _outcome(f"web_search: the search provider failed: {getattr(exc, 'reason', exc)}", True)
    kept = []
    for result in results:
        host = urllib.parse.urlsplit(result.url).hostname or ""
        if host and domain_allowed(host, config)[0]:
            kept.append(result)
    if not kept:
        return _outcome(f"No results for {query!r}.")
    lines = []
    for index, result in enumerate(kept[:10], 1):
        lines.append(f"{index}. {result.title}\n   {result.url}\n   {result.snippet}".rstrip())
    return _outcome("\n".join(lines))
