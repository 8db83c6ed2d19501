#!/usr/bin/env python3
"""A minimal portal client, written from docs/protocol/portal.md alone.

It speaks version 1 of the portal protocol exactly as that page specifies it (framing, the JSON
envelope, the X25519 + Ed25519 handshake, ChaCha20-Poly1305 sealing) and serves two purposes:
the test suite runs it against a real daemon, and it proves that the page is enough to write a
client.

    python3 tests/portal/portal_client.py HOST:PORT [options] COMMAND...
    python3 tests/portal/portal_client.py --self-test

Options (before the commands):
    --cluster-secret S   the cluster secret (when the server is configured with one)
    --expect-node ID     refuse a server whose node id is not ID
    --key-seed HEX       32-byte Ed25519 seed (64 hex digits) instead of a fresh identity
    --timeout SECONDS    deadline of every wait: connect, handshake, each command (default 5)

Commands, run in order after the handshake:
    ping TEXT            send portal.ping with payload TEXT, wait for its pong, check the echo
    send TYPE JSON       send a message of TYPE with payload JSON; do not wait
    expect TYPE          wait for the next message of TYPE (printing the others meanwhile)
    raw-hex HEX          write these bytes on the socket as they are (not sealed)
    expect-close         wait until the server closes, printing the errors it sent first

Every line on stdout is one JSON object (an event). Exit status: 0 success, 1 failure (with one
line `portal_client: ...` on stderr), 2 bad usage.

Needs only the standard library and the `cryptography` package (Debian: python3-cryptography).
"""

import argparse
import contextlib
import hashlib
import io
import json
import re
import secrets
import socket
import struct
import sys
import threading
import time
from datetime import datetime, timezone

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# --- Constants from the page --------------------------------------------------------------------

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 65536          # "65536 by default"; we announce and enforce this
TAG_LEN = 16                       # Poly1305 tag
TRANSCRIPT_LABEL = b"snow-portal/1"
KEYS_LABEL = b"snow-portal/1 keys"
AUTH_LABEL = b"snow-portal/1 auth "
ENVELOPE_KEYS = {"type", "id", "sender", "timestamp", "payload", "traceparent"}
REQUIRED_KEYS = {"type", "id", "sender"}
# Codes the page calls fatal: the sender closes after them. bad_message is fatal only before
# the handshake, so it is not listed here.
FATAL_CODES = {"bad_frame", "handshake_failed", "unsupported_version", "too_many_connections",
               "timeout", "overloaded", "shutting_down"}

TYPE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
NODE_ID_RE = re.compile(r"[0-9a-f]{32}")
HEX32_RE = re.compile(r"[0-9a-f]{64}")
HEX64_RE = re.compile(r"[0-9a-f]{128}")
TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
TRACEPARENT_RE = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
LINGER_SECONDS = 0.5               # how long close() drains the peer's last frames


# --- Errors -------------------------------------------------------------------------------------

class PortalError(Exception):
    """A failure that ends the connection; str() is the one-line explanation for the user."""


class HandshakeFailed(PortalError):
    def __str__(self):
        return f"handshake failed: {self.args[0]}"


class Closed(PortalError):
    """The peer closed the connection (or reset it)."""


class Timeout(PortalError):
    """A deadline passed while waiting for the peer."""


class FrameRefused(PortalError):
    """A header announced an empty body or one over our limit (error code bad_frame)."""


class NotOpened(Exception):
    """A sealed frame failed authentication: wrong key, altered, replayed, reordered or dropped."""


class ProtocolError(Exception):
    """Something the peer sent is invalid; carries the error code and ref to answer with."""

    def __init__(self, code, message, ref=None, about_error=False):
        super().__init__(message)
        self.code, self.message, self.ref = code, message, ref
        self.about_error = about_error   # never answer an error with an error (no loops)


# --- Primitives ---------------------------------------------------------------------------------

def blake2b(data, digest_size, key=b""):
    return hashlib.blake2b(data, digest_size=digest_size, key=key).digest()


def node_id_of(public_key):
    return blake2b(public_key, 16).hex()


def u32be(n):
    return struct.pack(">I", n)


def nonce_for(n):
    # 4 zero bytes || u64le(n), n = sealed frames already sent in that direction.
    return b"\0" * 4 + struct.pack("<Q", n)


def now_rfc3339():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Identity:
    """A node's Ed25519 key pair and the node id derived from it."""

    def __init__(self, seed=None):
        self.key = (Ed25519PrivateKey.from_private_bytes(seed) if seed is not None
                    else Ed25519PrivateKey.generate())
        self.public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.node_id = node_id_of(self.public)


# --- Envelopes ----------------------------------------------------------------------------------

def encode_envelope(envelope):
    # ASCII-only JSON: any payload (even lone surrogates) encodes, and the byte count is exact.
    return json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode("ascii")


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key in a JSON object")
    return dict(pairs)


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def parse_json(data):
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity. Raises ValueError."""
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys,
                          parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def parse_envelope(body):
    """The envelope in a frame body, checked against the page's table; raises ProtocolError."""
    try:
        env = parse_json(bytes(body))
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError("bad_message", f"malformed JSON: {e}") from None
    if not isinstance(env, dict):
        raise ProtocolError("bad_message", "the envelope is not a JSON object")
    # Find the id first so that every later complaint can refer to the message.
    ref = env.get("id") if _valid_id(env.get("id")) else None
    about_error = env.get("type") == "portal.error"

    def bad(why):
        return ProtocolError("bad_message", why, ref, about_error)

    unknown = sorted(set(env) - ENVELOPE_KEYS)
    if unknown:
        raise bad(f"unknown envelope key(s): {', '.join(unknown)}")
    missing = sorted(REQUIRED_KEYS - set(env))
    if missing:
        raise bad(f"missing envelope key(s): {', '.join(missing)}")
    if not isinstance(env["type"], str) or not TYPE_RE.fullmatch(env["type"]):
        raise bad("bad type")
    if ref is None:
        raise bad("bad id: 1 to 64 printable ASCII characters")
    if not isinstance(env["sender"], str) or not NODE_ID_RE.fullmatch(env["sender"]):
        raise bad("bad sender: not a node id")
    if "timestamp" in env and not (isinstance(env["timestamp"], str)
                                   and TIMESTAMP_RE.fullmatch(env["timestamp"])):
        raise bad("bad timestamp: not RFC 3339 UTC")
    if "traceparent" in env and not (isinstance(env["traceparent"], str)
                                     and TRACEPARENT_RE.fullmatch(env["traceparent"])):
        raise bad("bad traceparent")
    return env


def _valid_id(value):
    return (isinstance(value, str) and 1 <= len(value) <= 64
            and all(0x20 <= ord(c) <= 0x7E for c in value))


def error_fields(envelope):
    """code, message, ref of a portal.error, tolerating a malformed payload."""
    p = envelope.get("payload")
    p = p if isinstance(p, dict) else {}
    return p.get("code"), p.get("message"), p.get("ref")


# --- Framing and sealing ------------------------------------------------------------------------

class Channel:
    """Frames on a socket: `u32be(length) || body`, plain until keys are set, sealed after."""

    def __init__(self, sock, io_timeout, max_frame=DEFAULT_MAX_FRAME):
        self.sock = sock
        self.io_timeout = io_timeout
        self.max_frame = max_frame                 # ours, announced in our hello
        self.peer_max_frame = DEFAULT_MAX_FRAME    # the peer's, known once its hello arrived
        self._buf = bytearray()
        self._send_aead = self._recv_aead = None
        self._send_n = self._recv_n = 0
        self.closed = False

    def set_keys(self, send_key, recv_key):
        self._send_aead = ChaCha20Poly1305(send_key)
        self._recv_aead = ChaCha20Poly1305(recv_key)

    @property
    def sealed(self):
        return self._send_aead is not None

    # Reading

    def read_body(self, deadline):
        """The next frame's body. The header is checked before the body is read, because framing
        cannot resynchronise after a bad length."""
        (length,) = struct.unpack(">I", self._read_exact(4, deadline))
        limit = self.max_frame + (TAG_LEN if self._recv_aead else 0)
        if length == 0:
            raise FrameRefused("the peer sent a frame header announcing an empty body")
        if length > limit:
            raise FrameRefused(f"the peer announced a {length}-byte frame (limit {limit})")
        return bytes(self._read_exact(length, deadline))

    def _read_exact(self, n, deadline):
        while len(self._buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout("timed out")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise Timeout("timed out") from None
            except (ConnectionResetError, ConnectionAbortedError):
                chunk = b""
            if not chunk:
                detail = " in the middle of a frame" if self._buf else ""
                raise Closed(f"the peer closed the connection{detail}")
            self._buf += chunk
        data = self._buf[:n]
        del self._buf[:n]
        return data

    def open(self, body):
        """Plaintext of a sealed frame; the AD is the header, rebuilt from the body's length."""
        if len(body) < TAG_LEN:
            raise NotOpened()
        try:
            plaintext = self._recv_aead.decrypt(nonce_for(self._recv_n), body, u32be(len(body)))
        except InvalidTag:
            raise NotOpened() from None
        self._recv_n += 1
        return plaintext

    # Writing

    def frame(self, text):
        """The frame carrying `text` (an envelope's JSON), sealed once keys are set."""
        if len(text) > self.peer_max_frame:
            raise PortalError(f"a {len(text)}-byte message exceeds the peer's max_frame "
                              f"{self.peer_max_frame}")
        if self._send_aead is None:
            return u32be(len(text)) + text
        header = u32be(len(text) + TAG_LEN)
        sealed = self._send_aead.encrypt(nonce_for(self._send_n), text, header)
        self._send_n += 1
        return header + sealed

    def write(self, data):
        self.sock.settimeout(self.io_timeout)
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise Timeout("timed out writing to the peer") from None
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            raise Closed("the peer closed the connection") from None

    def close(self):
        """Half-close, then read what the peer still sends for a moment: closing with unread
        input would reset the connection and could destroy our own last (error) frame."""
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
            end = time.monotonic() + LINGER_SECONDS
            while (remaining := end - time.monotonic()) > 0:
                self.sock.settimeout(remaining)
                if not self.sock.recv(65536):
                    break
        except OSError:
            pass
        finally:
            self.sock.close()


# --- One side of a connection -------------------------------------------------------------------

class Endpoint:
    """One side of a portal connection (client or server role): the handshake and messages."""

    def __init__(self, sock, identity, role, secret=None, expect_node=None, emit=None,
                 io_timeout=5.0):
        self.chan = Channel(sock, io_timeout)
        self.identity = identity
        self.role = role
        self.secret = secret
        self.expect_node = expect_node
        self.emit = emit or (lambda event: None)
        self.peer_id = None
        self._next_id = 0

    # Sending

    def new_id(self):
        # "hello" and "auth" are taken by the handshake; numbers never collide with them.
        self._next_id += 1
        return str(self._next_id)

    def envelope(self, type_, payload=None, id_=None):
        env = {"type": type_, "id": id_ or self.new_id(), "sender": self.identity.node_id,
               "timestamp": now_rfc3339()}
        if payload is not None:
            env["payload"] = payload
        return env

    def send(self, type_, payload=None, id_=None, quiet=False):
        """Sends one envelope (plain or sealed as the state requires); returns its id."""
        env = self.envelope(type_, payload, id_)
        self.chan.write(self.chan.frame(encode_envelope(env)))
        if not quiet:
            self.emit({"event": "sent", "envelope": env})
        return env["id"]

    def send_error(self, code, message, ref=None):
        """Best effort: the connection may already be gone when we complain."""
        payload = {"code": code, "message": message}
        if ref is not None:
            payload["ref"] = ref
        with contextlib.suppress(PortalError, OSError):
            self.send("portal.error", payload)

    def fail(self, code, message, ref=None, exc=PortalError):
        """Fatal: tell the peer why, close, raise."""
        self.send_error(code, message, ref)
        self.close()
        raise exc(message)

    def close(self):
        self.chan.close()

    # Receiving after the handshake

    def receive(self, deadline):
        """The next valid envelope from the peer. Answers what the protocol itself answers
        (pings, malformed messages, unknown portal.* types); raises Closed, Timeout or
        PortalError when the connection is over."""
        while True:
            body = self._read_body(deadline)
            try:
                text = self.chan.open(body)
            except NotOpened:
                self.close()
                raise PortalError("a frame from the peer did not open (altered, injected, "
                                  "replayed, reordered or dropped); connection closed") from None
            try:
                env = parse_envelope(text)
                if env["sender"] != self.peer_id:
                    raise ProtocolError("bad_message", f"sender {env['sender']} is not the peer "
                                        f"{self.peer_id}", env["id"], env["type"] == "portal.error")
            except ProtocolError as e:
                self.emit({"event": "bad-message", "reason": e.message, "ref": e.ref})
                if not e.about_error:
                    self.send_error(e.code, e.message, e.ref)
                continue
            self._emit_received(env)
            self._answer(env)
            return env

    def _read_body(self, deadline):
        try:
            return self.chan.read_body(deadline)
        except FrameRefused as e:
            self.fail("bad_frame", str(e))

    def _emit_received(self, env):
        if env["type"] == "portal.error":
            code, message, ref = error_fields(env)
            self.emit({"event": "error", "code": code, "message": message, "ref": ref})
        else:
            self.emit({"event": "received", "envelope": env})

    def _answer(self, env):
        t = env["type"]
        if t == "portal.ping":
            self.send("portal.pong", {"ref": env["id"], "payload": env.get("payload")})
        elif t in ("portal.hello", "portal.auth"):
            self.send_error("bad_message", f"{t} after the handshake", env["id"])
        elif t.startswith("portal.") and t not in ("portal.pong", "portal.error"):
            self.send_error("unknown_type", f"unknown protocol message type {t}", env["id"])


# --- The handshake ------------------------------------------------------------------------------

def handshake(ep, deadline):
    """Runs the page's handshake on `ep` (either role); returns when the peer's auth verified.
    Raises HandshakeFailed with the reason."""
    ephemeral = X25519PrivateKey.generate()
    challenge = secrets.token_bytes(32)
    own_hello = _send_hello(ep, ephemeral, challenge)

    peer_hello_body = _handshake_read(ep, deadline, "hello")
    hello = _accept_hello(ep, peer_hello_body)

    hello_c, hello_s = ((own_hello, peer_hello_body) if ep.role == "client"
                        else (peer_hello_body, own_hello))
    transcript = blake2b(TRANSCRIPT_LABEL + u32be(len(hello_c)) + hello_c
                         + u32be(len(hello_s)) + hello_s, 32)
    shared = _x25519(ephemeral, hello["ephemeral_key"])
    if shared is None:
        ep.fail("handshake_failed", "the X25519 shared secret is all zeros", exc=HandshakeFailed)
    ck = blake2b(ep.secret.encode("utf-8"), 32) if ep.secret is not None else b""
    keys = blake2b(KEYS_LABEL + shared + transcript, 64, key=ck)
    k_cs, k_sc = keys[:32], keys[32:]
    ep.chan.set_keys(*((k_cs, k_sc) if ep.role == "client" else (k_sc, k_cs)))
    ep.chan.peer_max_frame = hello["max_frame"]

    signature = ep.identity.key.sign(AUTH_LABEL + ep.role.encode("ascii") + transcript)
    try:
        ep.send("portal.auth", {"signature": signature.hex()}, id_="auth", quiet=True)
    except PortalError as e:
        ep.close()
        raise HandshakeFailed(f"could not send our auth: {e}") from None
    _verify_auth(ep, _handshake_read(ep, deadline, "auth"), hello, transcript)


def _send_hello(ep, ephemeral, challenge):
    """Sends our hello; returns the exact body bytes (they enter the transcript)."""
    payload = {"version": PROTOCOL_VERSION, "role": ep.role,
               "public_key": ep.identity.public.hex(),
               "ephemeral_key": ephemeral.public_key().public_bytes(Encoding.Raw,
                                                                    PublicFormat.Raw).hex(),
               "challenge": challenge.hex(), "cluster_secret": ep.secret is not None,
               "max_frame": ep.chan.max_frame}
    body = encode_envelope(ep.envelope("portal.hello", payload, "hello"))
    try:
        ep.chan.write(u32be(len(body)) + body)
    except PortalError as e:
        ep.close()
        raise HandshakeFailed(f"could not send our hello: {e}") from None
    return body


def _handshake_read(ep, deadline, what):
    try:
        return ep.chan.read_body(deadline)
    except FrameRefused as e:
        ep.fail("bad_frame", str(e), exc=HandshakeFailed)
    except Timeout:
        ep.close()
        raise HandshakeFailed(f"timed out waiting for the peer's {what}") from None
    except Closed as e:
        ep.close()
        raise HandshakeFailed(f"{e} before sending its {what}") from None


def _accept_hello(ep, body):
    """The peer hello's checked fields (bytes for the keys); on a failure, a plain error frame,
    close, HandshakeFailed."""
    try:
        env = parse_envelope(body)
        if env["type"] == "portal.error":
            # A server that refuses the connection outright (too_many_connections,
            # shutting_down) may send only an error instead of its hello.
            ep.close()
            raise HandshakeFailed(_refusal(env))
        return _check_hello(ep, env)
    except ProtocolError as e:
        ep.fail(e.code, e.message, e.ref, exc=HandshakeFailed)


def _check_hello(ep, env):
    """The page's checks, in its order. Malformed fields are bad_message; well-formed but
    unacceptable ones (role, identity, cluster secret) are handshake_failed."""
    ref = env["id"]

    def bad(why):
        return ProtocolError("bad_message", why, ref)

    def refuse(why):
        return ProtocolError("handshake_failed", why, ref)

    if env["type"] != "portal.hello":
        raise refuse(f"expected portal.hello, got {env['type']}")
    p = env.get("payload")
    if not isinstance(p, dict):
        raise bad("the hello's payload is not an object")
    if type(p.get("version")) is not int:     # type(): True is an int in Python
        raise bad("the hello has no integer version")
    if p["version"] != PROTOCOL_VERSION:
        raise ProtocolError("unsupported_version", f"version {p['version']} is not supported "
                            f"(this side speaks {PROTOCOL_VERSION})", ref)
    if p.get("role") not in ("client", "server"):
        raise bad("the hello's role is neither client nor server")
    if p["role"] == ep.role:
        raise refuse(f"both sides claim the role {ep.role}")
    for field in ("public_key", "ephemeral_key", "challenge"):
        if not isinstance(p.get(field), str) or not HEX32_RE.fullmatch(p[field]):
            raise bad(f"the hello's {field} is not 32 bytes of lower-case hex")
    if type(p.get("cluster_secret")) is not bool:
        raise bad("the hello's cluster_secret is not a boolean")
    if type(p.get("max_frame")) is not int or p["max_frame"] < 1:
        raise bad("the hello's max_frame is not a positive integer")
    public_key = bytes.fromhex(p["public_key"])
    if env["sender"] != node_id_of(public_key):
        raise refuse("the hello's sender is not the node id of its public_key")
    if public_key == ep.identity.public:
        raise refuse("the peer is this node itself")
    if ep.expect_node is not None and env["sender"] != ep.expect_node:
        raise refuse(f"the peer is node {env['sender']}, expected {ep.expect_node}")
    if p["cluster_secret"] != (ep.secret is not None):
        ours = "configured" if ep.secret is not None else "not configured"
        raise refuse(f"cluster secret {ours} here but "
                     f"{'configured' if p['cluster_secret'] else 'not configured'} on the peer")
    ep.peer_id = env["sender"]
    return {"public_key": public_key, "ephemeral_key": bytes.fromhex(p["ephemeral_key"]),
            "max_frame": p["max_frame"]}


def _x25519(own, peer_public):
    """The shared secret, or None when it is all zeros (a low-order peer key); OpenSSL itself
    refuses to derive such a secret, which shows as a ValueError."""
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        return None
    return None if shared == bytes(32) else shared


def _verify_auth(ep, body, hello, transcript):
    """The first sealed frame must be the peer's portal.auth with a valid signature."""
    try:
        text = ep.chan.open(body)
    except NotOpened:
        # A peer that refused our hello answers with a *plain* error frame even though we
        # already expect sealed ones: show its reason rather than "did not open".
        refusal = _plain_error(body)
        if refusal:
            ep.close()
            raise HandshakeFailed(refusal) from None
        ep.fail("handshake_failed", "the auth frame did not open: the two sides do not "
                "know the same cluster secret, or the frame was altered or replayed",
                exc=HandshakeFailed)
    try:
        env = parse_envelope(text)
    except ProtocolError as e:
        ep.fail("handshake_failed", f"bad auth message: {e.message}", e.ref, exc=HandshakeFailed)
    if env["type"] == "portal.error":
        ep.close()
        raise HandshakeFailed(_refusal(env))
    if env["type"] != "portal.auth":
        ep.fail("handshake_failed", f"expected portal.auth, got {env['type']}", env["id"],
                exc=HandshakeFailed)
    if env["sender"] != ep.peer_id:
        ep.fail("handshake_failed", "the auth's sender is not the hello's", env["id"],
                exc=HandshakeFailed)
    p = env.get("payload")
    sig = p.get("signature") if isinstance(p, dict) else None
    if not isinstance(sig, str) or not HEX64_RE.fullmatch(sig):
        ep.fail("handshake_failed", "the auth's signature is not 64 bytes of lower-case hex",
                env["id"], exc=HandshakeFailed)
    peer_role = "server" if ep.role == "client" else "client"
    try:
        Ed25519PublicKey.from_public_bytes(hello["public_key"]).verify(
            bytes.fromhex(sig), AUTH_LABEL + peer_role.encode("ascii") + transcript)
    except (InvalidSignature, ValueError):
        ep.fail("handshake_failed", "the auth's signature does not verify", env["id"],
                exc=HandshakeFailed)


def _plain_error(body):
    """The reason in `body` if it is a plain portal.error frame, else None."""
    try:
        env = parse_envelope(body)
    except ProtocolError:
        return None
    return _refusal(env) if env["type"] == "portal.error" else None


def _refusal(env):
    code, message, _ = error_fields(env)
    return f"the peer refused: {code}: {message}"


# --- The client's commands ----------------------------------------------------------------------

def print_event(event):
    print(json.dumps(event, separators=(",", ":")), flush=True)


def wait_for(ep, deadline, timeout, what, accept, refers_to=()):
    """Receives until `accept(envelope)`; fails on a timeout, a close, a fatal error, or an
    error about one of the message ids in `refers_to`."""
    while True:
        try:
            env = ep.receive(deadline)
        except Timeout:
            raise PortalError(f"timed out after {timeout:g} s waiting for {what}") from None
        except Closed as e:
            raise PortalError(f"{e} while waiting for {what}") from None
        if accept(env):
            return env
        if env["type"] == "portal.error":
            code, message, ref = error_fields(env)
            if ref is not None and ref in refers_to:
                raise PortalError(f"the peer refused message {ref}: {code}: {message}")
            if code in FATAL_CODES:
                raise PortalError(f"fatal error from the peer while waiting for {what}: "
                                  f"{code}: {message}")


def cmd_ping(ep, text, timeout):
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    ping_id = ep.send("portal.ping", text)

    def is_our_pong(env):
        p = env.get("payload")
        return env["type"] == "portal.pong" and isinstance(p, dict) and p.get("ref") == ping_id

    pong = wait_for(ep, deadline, timeout, f"the pong to ping {ping_id}", is_our_pong, {ping_id})
    echoed = pong["payload"].get("payload")
    if echoed != text:
        raise PortalError(f"the pong to ping {ping_id} echoed {echoed!r} instead of {text!r}")
    print_event({"event": "pong", "ref": ping_id, "payload": echoed,
                 "rtt_ms": round((time.monotonic() - start) * 1000, 3)})


def cmd_expect(ep, type_, timeout, pending):
    deadline = time.monotonic() + timeout
    wait_for(ep, deadline, timeout, f"a {type_} message", lambda env: env["type"] == type_,
             pending)


def cmd_expect_close(ep, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            ep.receive(deadline)
        except Closed as e:
            ep.close()
            print_event({"event": "closed", "detail": str(e)})
            return
        except Timeout:
            raise PortalError(f"timed out after {timeout:g} s: the peer did not close the "
                              "connection") from None


def run_commands(ep, commands, timeout):
    # Ids sent by `send` since the last waiting command: an error about one of them ends the
    # next `expect` (the reply it waits for will not come).
    pending = set()
    for name, args in commands:
        try:
            if name == "send":
                pending.add(ep.send(args[0], args[1]))
            elif name == "raw-hex":
                ep.chan.write(args[0])
                print_event({"event": "sent-raw", "hex": args[0].hex()})
            elif name == "send-sealed":
                # Any text as a message, sealed properly: for bad-input tests (malformed JSON).
                ep.chan.write(ep.chan.frame(args[0].encode()))
                print_event({"event": "sent-sealed", "text": args[0]})
            elif name == "stall":
                # Reads nothing for a while: a slow reader, for the sender's high-water mark.
                time.sleep(float(args[0]))
                print_event({"event": "stalled", "seconds": float(args[0])})
            elif name == "ping":
                cmd_ping(ep, args[0], timeout)
            elif name == "expect":
                cmd_expect(ep, args[0], timeout, pending)
                pending = set()
            elif name == "expect-close":
                cmd_expect_close(ep, timeout)
        except PortalError as e:
            raise PortalError(f"{name}: {e}") from None


# --- Command line -------------------------------------------------------------------------------

COMMAND_ARITY = {"ping": 1, "send": 2, "expect": 1, "raw-hex": 1, "send-sealed": 1, "stall": 1,
                 "expect-close": 0}
VALUE_OPTIONS = {"--cluster-secret", "--expect-node", "--key-seed", "--timeout"}


def make_parser():
    parser = argparse.ArgumentParser(
        prog="portal_client.py",
        usage="%(prog)s HOST:PORT [options] COMMAND...\n       %(prog)s --self-test",
        description="A minimal portal client following docs/protocol/portal.md. Commands: "
                    "ping TEXT | send TYPE JSON | expect TYPE | raw-hex HEX | send-sealed TEXT | "
                    "stall SECONDS | expect-close.")
    parser.add_argument("target", nargs="?", help="HOST:PORT of the portal server")
    parser.add_argument("--cluster-secret", metavar="S", help="the cluster secret, if any")
    parser.add_argument("--expect-node", metavar="ID",
                        help="refuse a server whose node id is not ID")
    parser.add_argument("--key-seed", metavar="HEX", help="32-byte Ed25519 seed, 64 hex digits")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=5.0,
                        help="deadline of every wait (default 5)")
    parser.add_argument("--self-test", action="store_true",
                        help="run the built-in client/server checks and exit")
    return parser


def split_argv(argv):
    """Options and target come first; the commands start at the first command word after the
    target. (Scanning by hand lets an option's value or a command's argument be any string.)"""
    head, i, seen_target = [], 0, False
    while i < len(argv):
        tok = argv[i]
        if seen_target and tok in COMMAND_ARITY:
            break
        head.append(tok)
        if tok in VALUE_OPTIONS and i + 1 < len(argv):
            head.append(argv[i + 1])
            i += 1
        elif not tok.startswith("-"):
            seen_target = True
        i += 1
    return head, argv[i:]


def parse_commands(parser, words):
    commands, i = [], 0
    while i < len(words):
        name = words[i]
        if name not in COMMAND_ARITY:
            parser.error(f"unknown command {name!r}")
        args = words[i + 1:i + 1 + COMMAND_ARITY[name]]
        if len(args) < COMMAND_ARITY[name]:
            parser.error(f"{name} needs {COMMAND_ARITY[name]} argument(s)")
        if commands and commands[-1][0] == "expect-close":
            parser.error("expect-close must be the last command")
        commands.append((name, _convert_args(parser, name, args)))
        i += 1 + len(args)
    return commands


def _convert_args(parser, name, args):
    if name == "send":
        try:
            return [args[0], parse_json(args[1])]
        except ValueError as e:
            parser.error(f"send {args[0]}: payload is not JSON: {e}")
    if name == "raw-hex":
        try:
            return [bytes.fromhex(args[0])]
        except ValueError:
            parser.error(f"raw-hex: not hexadecimal: {args[0]!r}")
    return args


def parse_command_line(argv):
    parser = make_parser()
    head, words = split_argv(argv)
    opts = parser.parse_args(head)
    if opts.self_test:
        if opts.target or words:
            parser.error("--self-test takes no target and no commands")
        return opts, []
    if not opts.target:
        parser.error("HOST:PORT is required")
    opts.host, opts.port = _parse_target(parser, opts.target)
    if opts.timeout <= 0:
        parser.error("--timeout must be positive")
    if opts.expect_node is not None and not NODE_ID_RE.fullmatch(opts.expect_node):
        parser.error("--expect-node must be a node id: 32 lower-case hex digits")
    if opts.key_seed is not None:
        if not HEX32_RE.fullmatch(opts.key_seed.lower()):
            parser.error("--key-seed must be 64 hex digits (32 bytes)")
        opts.key_seed = bytes.fromhex(opts.key_seed)
    if opts.cluster_secret == "":
        parser.error("--cluster-secret must not be empty")
    return opts, parse_commands(parser, words)


def _parse_target(parser, target):
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        parser.error(f"bad HOST:PORT {target!r}")
    return host.strip("[]"), int(port)   # [::1]:7000 -> ::1


def run_client(opts, commands):
    deadline = time.monotonic() + opts.timeout
    try:
        sock = socket.create_connection((opts.host, opts.port), timeout=opts.timeout)
    except OSError as e:
        raise PortalError(f"connect to {opts.host}:{opts.port} failed: {e}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ep = Endpoint(sock, Identity(opts.key_seed), "client", opts.cluster_secret,
                  opts.expect_node, print_event, opts.timeout)
    try:
        handshake(ep, deadline)
        print_event({"event": "established", "peer": ep.peer_id, "node": ep.identity.node_id})
        run_commands(ep, commands, opts.timeout)
    finally:
        ep.close()


def main(argv=None):
    opts, commands = parse_command_line(sys.argv[1:] if argv is None else argv)
    if opts.self_test:
        return self_test()
    try:
        run_client(opts, commands)
    except PortalError as e:
        print(f"portal_client: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


# --- Self-test: the client against a tiny server-role implementation -------------------------

def serve(ep, timeout):
    """The server role of a small node: the handshake, then a `test` module that answers
    `test.echo` with `test.echoed` and `test.ping-me` with a ping (then `test.pinged` when the
    pong echoes it); every other application type gets unknown_type."""
    handshake(ep, time.monotonic() + timeout)
    my_ping = None
    while True:
        try:
            env = ep.receive(time.monotonic() + timeout)
        except Closed:
            ep.close()
            return
        t = env["type"]
        if t == "test.echo":
            ep.send("test.echoed", env.get("payload"))
        elif t == "test.ping-me":
            my_ping = ep.send("portal.ping", "from the server")
        elif t == "portal.pong":
            p = env.get("payload")
            if my_ping and isinstance(p, dict) and p.get("ref") == my_ping:
                ep.send("test.pinged", p.get("payload"))
        elif not t.startswith("portal."):
            ep.send_error("unknown_type", f"no module handles {t}", env["id"])


class ServerThread:
    """`serve` on one socket in a thread; `.error` is its failure message (None when the peer
    closed normally)."""

    def __init__(self, sock, identity, secret=None, expect_node=None, role="server",
                 timeout=3.0):
        self.ep = Endpoint(sock, identity, role, secret, expect_node, io_timeout=timeout)
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(timeout,), daemon=True)
        self.thread.start()

    def _run(self, timeout):
        try:
            serve(self.ep, timeout)
        except PortalError as e:
            self.error = str(e)

    def join(self):
        self.thread.join(10)
        if self.thread.is_alive():
            raise AssertionError("self-test server thread hung")
        return self.error


class Tamper:
    """A socket wrapper that changes the n-th frame we write (1-based): `flip` flips one bit
    at byte offset `at`; `replace` substitutes other bytes. Everything else is delegated."""

    def __init__(self, sock, n, flip_at=None, replace=None):
        self._sock, self._n, self._flip_at, self._replace = sock, n, flip_at, replace
        self.written = []

    def sendall(self, data):
        self.written.append(bytes(data))
        if len(self.written) == self._n:
            if self._replace is not None:
                data = self._replace
            elif self._flip_at is not None:
                data = bytearray(data)
                data[self._flip_at % len(data)] ^= 0x01
        return self._sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class Checks:
    def __init__(self):
        self.passed = 0

    def ok(self, condition, what):
        if not condition:
            raise AssertionError(f"self-test check failed: {what}")
        self.passed += 1

    def raises(self, fn, exc_type, contains, what):
        try:
            fn()
        except exc_type as e:
            self.ok(contains.lower() in str(e).lower(),
                    f"{what}: message {str(e)!r} should mention {contains!r}")
            return str(e)
        raise AssertionError(f"self-test check failed: {what}: no {exc_type.__name__}")


def _client(sock, identity=None, secret=None, expect_node=None, timeout=3.0, role="client"):
    ep = Endpoint(sock, identity or Identity(), role, secret, expect_node, print_event, timeout)
    handshake(ep, time.monotonic() + timeout)
    return ep


def _pair(server_identity=None, server_secret=None, server_expect=None, server_role="server"):
    a, b = socket.socketpair()
    server = ServerThread(b, server_identity or Identity(), server_secret, server_expect,
                          server_role)
    return a, server


def check_roundtrip(c, secret):
    label = f"[secret={'yes' if secret else 'no'}]"
    client_id, server_id = Identity(), Identity()
    a, server = _pair(server_id, secret)
    ep = _client(a, client_id, secret, expect_node=server_id.node_id)
    c.ok(ep.peer_id == server_id.node_id, f"{label} client sees the server's node id")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        cmd_ping(ep, "hello, portal", 3)
        ep.send("test.echo", {"n": [1, 2.5, None], "s": "h\u00e9"})
        echoed = _next_of_type(ep, "test.echoed")
        unknown_id = ep.send("nope.thing")
        err = _next_of_type(ep, "portal.error")
        ep.send("test.ping-me")
        pinged = _next_of_type(ep, "test.pinged")
    c.ok('"event":"pong"' in out.getvalue(), f"{label} ping answered with a matching pong")
    c.ok(echoed["payload"] == {"n": [1, 2.5, None], "s": "h\u00e9"}, f"{label} payload round trip")
    c.ok(error_fields(err)[0::2] == ("unknown_type", unknown_id),
         f"{label} unknown type answered with unknown_type about its id")
    c.ok(pinged.get("payload") == "from the server", f"{label} client answers the server's ping")
    c.ok(server.ep.peer_id == client_id.node_id, f"{label} server sees the client's node id")
    ep.close()
    c.ok(server.join() is None, f"{label} server ends cleanly when the client closes")


def check_secret_mismatch(c):
    a, server = _pair(server_secret="one secret")
    c.raises(lambda: _client(a, secret="another secret"), HandshakeFailed, "cluster secret",
             "different secrets: the client")
    c.ok("cluster secret" in (server.join() or ""), "different secrets: the server says why")

    a, server = _pair(server_secret="only the server has one")
    c.raises(lambda: _client(a), HandshakeFailed, "cluster secret not configured",
             "secret on one side only: the client")
    c.ok("cluster secret" in (server.join() or ""), "secret on one side only: the server")


def check_tampering(c):
    # Client to server, after the handshake: a flipped bit in the ciphertext.
    a, server = _pair()
    ep = _client(a)
    frame = bytearray(ep.chan.frame(encode_envelope(ep.envelope("test.echo", "x"))))
    frame[10] ^= 0x01
    ep.chan.write(bytes(frame))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        cmd_expect_close(ep, 3)
    c.ok('"event":"closed"' in out.getvalue(), "tampered frame: the server closes")
    c.ok("did not open" in (server.join() or ""), "tampered frame: the server detects it")

    # Server to client: the server's third frame (hello, auth, then the pong) in its tag.
    a, b = socket.socketpair()
    server = ServerThread(Tamper(b, 3, flip_at=-1), Identity())
    ep = _client(a)
    with contextlib.redirect_stdout(io.StringIO()):
        c.raises(lambda: cmd_ping(ep, "x", 3), PortalError, "did not open",
                 "tampered frame from the server: the client detects it")
    server.join()

    # The auth frame itself.
    # The client cannot know before the server answers: its own check of the server's auth
    # passes, then the server's sealed handshake_failed arrives.
    a, server = _pair()
    ep = _client(Tamper(a, 2, flip_at=20))
    c.raises(lambda: _wait_for_nothing(ep), PortalError, "handshake_failed",
             "tampered auth: the client is told")
    c.ok("auth frame did not open" in (server.join() or ""), "tampered auth: the server says so")


def _wait_for_nothing(ep):
    wait_for(ep, time.monotonic() + 3, 3, "nothing", lambda env: False)


def _next_of_type(ep, type_):
    return wait_for(ep, time.monotonic() + 3, 3, type_, lambda env: env["type"] == type_)


def check_replay(c):
    server_id = Identity()
    # Connection 1: record what an honest client sends.
    a, server = _pair(server_id)
    recorder = Tamper(a, 0)
    _client(recorder).close()
    server.join()
    old_hello, old_auth = recorder.written[:2]

    # Connection 2: a fresh hello, then the auth recorded on connection 1.
    a, server = _pair(server_id)
    ep = _client(Tamper(a, 2, replace=old_auth))
    c.raises(lambda: _wait_for_nothing(ep), PortalError, "handshake_failed",
             "replayed auth: the client is told")
    c.ok("auth frame did not open" in (server.join() or ""), "replayed auth: the server refuses")

    # Connection 3: connection 1's hello and auth replayed byte for byte.
    a, server = _pair(server_id)
    a.sendall(old_hello + old_auth)
    a.shutdown(socket.SHUT_WR)
    c.ok("auth frame did not open" in (server.join() or ""),
         "replayed handshake: the server refuses")
    a.close()


def check_hello_refusals(c):
    server_id = Identity()
    a, server = _pair(server_id)
    c.raises(lambda: _client(a, expect_node="0" * 32), HandshakeFailed, "expected",
             "--expect-node mismatch: the client refuses")
    c.ok("refused" in (server.join() or ""), "--expect-node mismatch: the server is told why")

    a, server = _pair(server_id)
    c.raises(lambda: _client(a, identity=server_id), HandshakeFailed, "itself",
             "connecting to itself is refused")
    server.join()

    a, server = _pair(server_role="client")
    c.raises(lambda: _client(a), HandshakeFailed, "role", "two clients are refused")
    server.join()

    for what, change, code in [
            ("version 2", lambda p: p.update(version=2), "unsupported_version"),
            ("all-zero ephemeral key", lambda p: p.update(ephemeral_key="00" * 32),
             "handshake_failed"),
            ("uppercase hex", lambda p: p.update(challenge="AB" * 32), "bad_message")]:
        c.ok(_raw_hello_answer(change) == code, f"hello with {what} is answered {code}")
    c.ok(_raw_hello_answer(None, extra_key=True) == "bad_message",
         "an envelope with an unknown key is answered bad_message")


def _raw_hello_answer(change, extra_key=False):
    """Sends a hand-made hello to a server; returns the code of the plain error it answers."""
    a, server = _pair()
    ident = Identity()
    payload = {"version": 1, "role": "client", "public_key": ident.public.hex(),
               "ephemeral_key": X25519PrivateKey.generate().public_key().public_bytes(
                   Encoding.Raw, PublicFormat.Raw).hex(),
               "challenge": secrets.token_bytes(32).hex(), "cluster_secret": False,
               "max_frame": DEFAULT_MAX_FRAME}
    if change:
        change(payload)
    env = {"type": "portal.hello", "id": "hello", "sender": ident.node_id, "payload": payload}
    if extra_key:
        env["extra"] = 1
    body = encode_envelope(env)
    a.sendall(u32be(len(body)) + body)
    chan = Channel(a, 3)
    deadline = time.monotonic() + 3
    chan.read_body(deadline)                     # the server's hello
    answer = parse_envelope(chan.read_body(deadline))
    a.close()
    server.join()
    return error_fields(answer)[0]


def check_bad_input(c):
    for what, raw in [("an oversized length prefix", "ffffffff"), ("an empty frame", "00000000")]:
        a, server = _pair()
        ep = _client(a)
        ep.chan.write(bytes.fromhex(raw))
        with contextlib.redirect_stdout(io.StringIO()) as out:
            cmd_expect_close(ep, 3)
        events = [json.loads(line) for line in out.getvalue().splitlines()]
        c.ok(any(e.get("code") == "bad_frame" for e in events),
             f"{what}: the server's sealed bad_frame error is read before the close")
        server.join()

    a, server = _pair()
    ep = _client(a)
    bad = {"type": "test.echo", "id": "x1", "sender": ep.identity.node_id, "extra": True}
    ep.chan.write(ep.chan.frame(encode_envelope(bad)))
    wrong_sender = ep.envelope("test.echo")
    wrong_sender["sender"] = "f" * 32
    ep.chan.write(ep.chan.frame(encode_envelope(wrong_sender)))
    with contextlib.redirect_stdout(io.StringIO()):
        e1 = _next_of_type(ep, "portal.error")
        e2 = _next_of_type(ep, "portal.error")
        cmd_ping(ep, "still alive", 3)
    c.ok(error_fields(e1)[0::2] == ("bad_message", "x1"), "unknown key after the handshake: "
         "bad_message about it")
    c.ok(error_fields(e2)[0::2] == ("bad_message", wrong_sender["id"]),
         "wrong sender: bad_message about it")
    ep.close()
    c.ok(server.join() is None, "bad_message after the handshake is not fatal: the ping was "
         "answered and the server ended cleanly")

    a, server = _pair()
    ep = _client(a)
    c.raises(lambda: cmd_expect(ep, "never.comes", 0.3, set()), PortalError, "timed out",
             "expect fails at its timeout")
    ep.close()
    server.join()


class LoopbackServer:
    """A TCP listener on 127.0.0.1 that serves each connection in a thread, for the CLI."""

    def __init__(self, identity, secret=None):
        self.identity, self.secret = identity, secret
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.servers = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        with contextlib.suppress(OSError):
            while True:
                sock, _ = self.listener.accept()
                self.servers.append(ServerThread(sock, self.identity, self.secret))

    def close(self):
        self.listener.close()


def _run_cli(argv):
    """main(argv) in this process; returns (exit status, stdout lines as JSON, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as e:
            status = e.code
    return status, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def check_cli(c):
    for secret in (None, "cli secret"):
        srv = LoopbackServer(Identity(), secret)
        args = [srv.address, "--timeout", "3", "--expect-node", srv.identity.node_id]
        args += ["--cluster-secret", secret] if secret else []
        status, events, err = _run_cli(args + [
            "ping", "hi", "send", "test.echo", '{"k":"v"}', "expect", "test.echoed",
            "send", "nope.x", "null", "expect", "portal.error",
            "raw-hex", "ffffffff", "expect-close"])
        kinds = [e["event"] for e in events]
        c.ok(status == 0 and not err, f"CLI run (secret={bool(secret)}) exits 0: {err.strip()}")
        c.ok(kinds[0] == "established" and events[0]["peer"] == srv.identity.node_id
             and "pong" in kinds and kinds[-1] == "closed", f"CLI events: {kinds}")
        c.ok(any(e.get("code") == "bad_frame" for e in events),
             "CLI expect-close prints the server's bad_frame error")
        srv.close()

    srv = LoopbackServer(Identity(), "right")
    status, _, err = _run_cli([srv.address, "--timeout", "3", "--cluster-secret", "wrong",
                               "ping", "x"])
    c.ok(status == 1 and err.startswith("portal_client: handshake failed:")
         and "cluster secret" in err, f"CLI with the wrong secret: exit 1, clear message: {err}")
    status, _, err = _run_cli([srv.address, "--timeout", "3", "ping", "x"])
    c.ok(status == 1 and "cluster secret not configured here" in err,
         f"CLI without the secret: exit 1, clear message: {err}")
    srv.close()

    srv = LoopbackServer(Identity())
    status, events, err = _run_cli([srv.address, "--timeout", "1", "send", "nope.y", "{}",
                                    "expect", "nope.reply"])
    c.ok(status == 1 and "refused message" in err and "unknown_type" in err,
         f"CLI expect ends on an error about the preceding send: {err}")
    status, _, err = _run_cli([srv.address, "--timeout", "0.3", "expect", "never.comes"])
    c.ok(status == 1 and "timed out" in err, f"CLI expect times out: {err}")
    srv.close()

    for bad in (["127.0.0.1"], ["127.0.0.1:1", "fly"], ["127.0.0.1:1", "send", "a.b", "{"],
                ["127.0.0.1:1", "--expect-node", "xyz"], []):
        c.ok(_run_cli(bad)[0] == 2, f"bad usage {bad} exits 2")


def self_test():
    """Runs every check; the clients' event lines are kept and shown only on a failure."""
    c = Checks()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            check_roundtrip(c, None)
            check_roundtrip(c, "s3cret \u00e9")
            check_secret_mismatch(c)
            check_tampering(c)
            check_replay(c)
            check_hello_refusals(c)
            check_bad_input(c)
            check_cli(c)
    except BaseException:
        print(f"self-test: FAILED after {c.passed} passed checks; client events:\n"
              + log.getvalue(), file=sys.stderr)
        raise
    print(f"self-test: {c.passed} checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
