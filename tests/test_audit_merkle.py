"""The proof formats: RFC 6962 Merkle hashing and proofs, C2SP signed notes and checkpoints.

Checked against an independent, deliberately naive recursive implementation
written here from the RFC text, against the published Certificate
Transparency vectors (transparency-dev/merkle testonly/constants.go and
proof/verify_test.go) and against the signed-note example of
golang.org/x/mod/sumdb/note, verified with the cryptography package directly.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from domicile.audit import merkle
from domicile.audit.note import (
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    cosign,
    open_checkpoint,
    open_note,
    parse_note,
    sign_note,
)
from domicile.errors import ConfigError

# -- an independent reference, straight from RFC 6962 §2.1 -------------------


def ref_leaf(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def ref_k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(entries: list[bytes]) -> bytes:
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return ref_leaf(entries[0])
    k = ref_k(n)
    return hashlib.sha256(b"\x01" + ref_mth(entries[:k]) + ref_mth(entries[k:])).digest()


def ref_path(m: int, entries: list[bytes]) -> list[bytes]:
    n = len(entries)
    if n == 1:
        return []
    k = ref_k(n)
    if m < k:
        return [*ref_path(m, entries[:k]), ref_mth(entries[k:])]
    return [*ref_path(m - k, entries[k:]), ref_mth(entries[:k])]


def ref_subproof(m: int, entries: list[bytes], b: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if b else [ref_mth(entries)]
    k = ref_k(n)
    if m <= k:
        return [*ref_subproof(m, entries[:k], b), ref_mth(entries[k:])]
    return [*ref_subproof(m - k, entries[k:], False), ref_mth(entries[:k])]


def ref_proof(m: int, entries: list[bytes]) -> list[bytes]:
    return ref_subproof(m, entries, True) if 0 < m < len(entries) else []


# -- published vectors -------------------------------------------------------

CT_ENTRIES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, proof) and (old size, new size, proof)
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CT_CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip

CT_LEAVES = [merkle.leaf_hash(e) for e in CT_ENTRIES]


def test_roots_match_the_published_rfc6962_vectors() -> None:
    for size, want in enumerate(CT_ROOTS):
        assert merkle.root_of_entries(CT_ENTRIES[:size]).hex() == want, size
        assert merkle.MerkleTree(CT_LEAVES).root(size).hex() == want, size
        assert ref_mth(CT_ENTRIES[:size]).hex() == want, size  # the reference agrees too
    assert merkle.EMPTY_ROOT.hex() == CT_ROOTS[0]


@pytest.mark.parametrize(("index", "size", "proof"), CT_INCLUSION)
def test_inclusion_proofs_match_the_published_vectors(
    index: int, size: int, proof: list[str]
) -> None:
    got = merkle.inclusion_proof(CT_LEAVES, index, size)
    assert [h.hex() for h in got] == proof
    root = bytes.fromhex(CT_ROOTS[size])
    assert merkle.verify_inclusion(index, size, CT_LEAVES[index], got, root)


@pytest.mark.parametrize(("old", "new", "proof"), CT_CONSISTENCY)
def test_consistency_proofs_match_the_published_vectors(
    old: int, new: int, proof: list[str]
) -> None:
    got = merkle.consistency_proof(CT_LEAVES, old, new)
    assert [h.hex() for h in got] == proof
    old_root, new_root = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
    assert merkle.verify_consistency(old, new, old_root, new_root, got)
    assert not merkle.verify_consistency(old, new, new_root, old_root, got)


def test_the_split_is_the_largest_power_of_two_below_n_not_the_midpoint() -> None:
    cases = {2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 8: 4, 9: 8, 1000: 512, 2**40 + 1: 2**40}
    for n, k in cases.items():
        assert merkle.split_point(n) == k
    with pytest.raises(ValueError):
        merkle.split_point(1)


def _entries(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") + b"entry" for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=24), max_size=70))
def test_root_matches_the_reference_for_any_entries(entries: list[bytes]) -> None:
    want = ref_mth(entries)
    leaves = [merkle.leaf_hash(e) for e in entries]
    assert merkle.root_from_leaf_hashes(leaves) == want
    assert merkle.root_from_leaf_hashes(iter(leaves)) == want  # one pass over an iterator
    tree = merkle.MerkleTree(leaves)
    assert tree.root() == want
    for size in range(len(entries) + 1):
        assert tree.root(size) == ref_mth(entries[:size])
    # Leaf by leaf and in uneven chunks: the same stored subtrees.
    one_by_one, chunked = merkle.MerkleTree(), merkle.MerkleTree()
    for leaf in leaves:
        one_by_one.append(leaf)
    for start in range(0, len(leaves), 7):
        chunked.extend(leaves[start : start + 7])
    for other in (one_by_one, chunked):
        assert other._levels == tree._levels
        assert other.root() == want


def test_a_large_tree_matches_the_reference() -> None:
    # Odd sizes above a power of two exercise the right edge at every level.
    entries = _entries(2**12 + 3)
    leaves = [merkle.leaf_hash(e) for e in entries]
    want = ref_mth(entries)
    assert merkle.root_from_leaf_hashes(leaves) == want
    assert merkle.MerkleTree(leaves).root() == want


def test_every_inclusion_proof_up_to_64_leaves_matches_and_verifies() -> None:
    entries = _entries(64)
    leaves = [merkle.leaf_hash(e) for e in entries]
    tree = merkle.MerkleTree(leaves)
    for size in range(1, 65):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == ref_path(index, entries[:size]), (index, size)
            assert merkle.verify_inclusion(index, size, leaves[index], proof, root)


def test_every_consistency_proof_up_to_64_leaves_matches_and_verifies() -> None:
    entries = _entries(64)
    tree = merkle.MerkleTree(merkle.leaf_hash(e) for e in entries)
    for new in range(0, 65):
        for old in range(0, new + 1):
            proof = tree.consistency_proof(old, new)
            assert proof == ref_proof(old, entries[:new]), (old, new)
            assert merkle.verify_consistency(old, new, tree.root(old), tree.root(new), proof)


def _corrupted(proof: list[bytes]) -> list[list[bytes]]:
    """Every proof one mistake away: a flipped bit, one hash more, one less, out of order."""
    out: list[list[bytes]] = []
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = bytes([wrong[i][0] ^ 8]) + wrong[i][1:]
        out.append(wrong)
    out.append([*proof, proof[-1] if proof else merkle.EMPTY_ROOT])
    out.append([merkle.EMPTY_ROOT, *proof])
    if proof:
        out.append(proof[:-1])
        out.append(proof[1:])
    if len(proof) > 1:
        out.append([proof[1], proof[0], *proof[2:]])
    return out


def test_inclusion_proofs_fail_for_wrong_inputs() -> None:
    entries = _entries(40)
    leaves = [merkle.leaf_hash(e) for e in entries]
    tree = merkle.MerkleTree(leaves)
    other = merkle.leaf_hash(b"not in the log")
    for size in range(1, 41):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            leaf = leaves[index]
            assert not merkle.verify_inclusion(index, size, other, proof, root)
            assert not merkle.verify_inclusion(index, size, leaf, proof, other)
            assert not merkle.verify_inclusion(size, size, leaf, proof, root)
            assert not merkle.verify_inclusion(index, size * 2, leaf, proof, root)
            if index + 1 < size and leaves[index + 1] != leaf:
                assert not merkle.verify_inclusion(index + 1, size, leaf, proof, root)
            for wrong in _corrupted(proof):
                assert not merkle.verify_inclusion(index, size, leaf, wrong, root), (index, size)


def test_consistency_proofs_fail_for_wrong_inputs() -> None:
    tree = merkle.MerkleTree(merkle.leaf_hash(e) for e in _entries(40))
    junk = hashlib.sha256(b"junk").digest()
    for new in range(2, 41):
        for old in range(1, new):
            proof = tree.consistency_proof(old, new)
            r1, r2 = tree.root(old), tree.root(new)
            assert not merkle.verify_consistency(old, new, junk, r2, proof)
            assert not merkle.verify_consistency(old, new, r1, junk, proof)
            assert not merkle.verify_consistency(old, new, r2, r1, proof)
            assert not merkle.verify_consistency(new, old, r1, r2, proof)
            assert not merkle.verify_consistency(old, new, r1, r2, [])
            if old + 1 < new:
                assert not merkle.verify_consistency(old + 1, new, r1, r2, proof)
            for wrong in _corrupted(proof):
                assert not merkle.verify_consistency(old, new, r1, r2, wrong), (old, new)


def test_trivial_consistency_cases() -> None:
    tree = merkle.MerkleTree(merkle.leaf_hash(e) for e in _entries(5))
    r = tree.root(5)
    assert merkle.verify_consistency(5, 5, r, r, [])
    assert not merkle.verify_consistency(5, 5, r, tree.root(4), [])
    assert not merkle.verify_consistency(5, 5, r, r, [r])
    assert merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, r, [])
    assert not merkle.verify_consistency(0, 5, r, r, [])


def test_proof_requests_out_of_range_are_refused() -> None:
    tree = merkle.MerkleTree(merkle.leaf_hash(e) for e in _entries(3))
    with pytest.raises(ValueError):
        tree.inclusion_proof(3, 3)
    with pytest.raises(ValueError):
        tree.inclusion_proof(0, 4)
    with pytest.raises(ValueError):
        tree.consistency_proof(3, 2)
    with pytest.raises(ValueError):
        tree.root(4)
    with pytest.raises(ValueError):
        tree.append(b"short")


# -- C2SP signed notes -------------------------------------------------------

# The example of golang.org/x/mod/sumdb/note: Ed25519 is deterministic, so
# signing the same text with the same key must reproduce the note byte for byte.
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def _go_signer() -> Signer:
    material = base64.b64decode(GO_SIGNER_KEY.split("+", 4)[4])
    assert material[0] == 1
    return Signer("PeterNeumann", Ed25519PrivateKey.from_private_bytes(material[1:]))


def test_signing_reproduces_the_go_sumdb_note_example() -> None:
    signer = _go_signer()
    assert signer.verifier_key() == GO_VERIFIER_KEY
    assert sign_note(GO_TEXT, signer) == GO_NOTE
    note, verified = open_note(GO_NOTE, [Verifier.from_key_text(GO_VERIFIER_KEY)])
    assert note.text == GO_TEXT
    assert [s.name for s in verified] == ["PeterNeumann"]


def test_key_id_and_signature_follow_the_spec_checked_with_cryptography() -> None:
    private = Ed25519PrivateKey.generate()
    signer = Signer("example.com/log", private)
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    want_id = hashlib.sha256(b"example.com/log\n\x01" + raw).digest()[:4]
    assert signer.key_id == want_id
    material = base64.b64encode(bytes([1]) + raw).decode()
    assert signer.verifier_key() == f"example.com/log+{want_id.hex()}+{material}"
    body = Checkpoint("example.com/log", 7, hashlib.sha256(b"x").digest()).text()
    signed = sign_note(body, signer)
    head, sig_line = signed.split("\n\n")
    assert head + "\n" == body
    assert sig_line.startswith("\u2014 example.com/log ")
    assert sig_line.endswith("\n") and sig_line.count("\n") == 1
    blob = base64.b64decode(sig_line.rstrip("\n").split(" ")[2])
    assert blob[:4] == want_id
    # The signature covers the body including its final newline, nothing more.
    Ed25519PublicKey.from_public_bytes(raw).verify(blob[4:], body.encode())


def test_checkpoint_body_is_origin_size_and_base64_root() -> None:
    root = hashlib.sha256(b"r").digest()
    text = Checkpoint("domicile/test", 42, root, ("ext one",)).text()
    assert text == f"domicile/test\n42\n{base64.b64encode(root).decode()}\next one\n"
    assert Checkpoint.parse(text) == Checkpoint("domicile/test", 42, root, ("ext one",))
    good = base64.b64encode(root).decode()
    for bad in [
        f"o\n042\n{good}\n",  # leading zero: not the canonical decimal
        f"o\n-1\n{good}\n",
        f"o\n1\n{base64.b64encode(root[:31]).decode()}\n",
        f"o\n1\n{good}",  # no final newline
        f"\n1\n{good}\n",
        "o\n1\n",
        f"o\n1\n{good}\n\nx\n",
    ]:
        with pytest.raises(NoteError):
            Checkpoint.parse(bad)


def test_unknown_signatures_are_ignored_and_cosign_appends() -> None:
    log = Signer("log.example", Ed25519PrivateKey.generate())
    witness = Signer("witness.example", Ed25519PrivateKey.generate())
    body = Checkpoint("log.example", 3, hashlib.sha256(b"r").digest()).text()
    note = sign_note(body, log)
    both = cosign(note, witness)
    assert both.startswith(note)  # the log's line is kept, the witness's added after it
    assert [s.name for s in parse_note(both).signatures] == ["log.example", "witness.example"]
    # A verifier that knows only the log key ignores the witness's line.
    head, _, verified = open_checkpoint(both, [log.verifier()])
    assert head.size == 3 and [s.name for s in verified] == ["log.example"]
    _, _, verified = open_checkpoint(both, [log.verifier(), witness.verifier()])
    assert [s.name for s in verified] == ["log.example", "witness.example"]
    # Cosigning twice by the same key replaces its line instead of adding one.
    assert len(parse_note(cosign(both, witness)).signatures) == 2
    # Only the witness key known: its line is enough to open the note.
    open_note(both, [witness.verifier()])


def test_notes_that_do_not_verify_are_refused() -> None:
    log = Signer("log.example", Ed25519PrivateKey.generate())
    other = Signer("log.example", Ed25519PrivateKey.generate())  # same name, other key
    note = sign_note("hello\n", log)
    with pytest.raises(NoteError, match="no valid signature"):
        open_note(note, [other.verifier()])
    forged = note.replace("hello", "hellO")
    with pytest.raises(NoteError, match="does not verify"):
        open_note(forged, [log.verifier()])
    sig = note.split("\n\n")[1]
    bad_notes = [
        "hello\n" + sig,  # no blank line
        "hello\n\n",  # no signature
        "hello\n\n- " + sig[2:],  # a hyphen, not an em dash
        "hello\n\n" + sig.rstrip("\n"),  # no final newline
        "hello\n\n" + sig.replace(" ", "  ", 1),
        "hel\x01lo\n\n" + sig,  # control character in the text
    ]
    for bad in bad_notes:
        with pytest.raises(NoteError):
            open_note(bad, [log.verifier()])


def test_non_canonical_base64_in_a_signature_is_refused() -> None:
    log = Signer("log.example", Ed25519PrivateKey.generate())
    note = sign_note("hello\n", log)
    # 68 bytes of key id and signature: the last base64 digit before '=' has two
    # padding bits that a lenient decoder ignores; setting one must not pass.
    text, line = note.split("\n\n")
    b64 = line.rstrip("\n").split(" ")[2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = b64[-2]
    sneaky = b64[:-2] + alphabet[alphabet.index(last) ^ 1] + "="
    assert base64.b64decode(sneaky) == base64.b64decode(b64)
    with pytest.raises(NoteError, match="non-canonical"):
        open_note(f"{text}\n\n\u2014 log.example {sneaky}\n", [log.verifier()])


def test_verifier_keys_are_parsed_strictly() -> None:
    v = Verifier.from_key_text(GO_VERIFIER_KEY)
    assert v.key_text() == GO_VERIFIER_KEY
    for bad in [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong id
        "PeterNeumanX+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong name
        "PeterNeumann+c74f20a3+AhpcZ2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong type
        "PeterNeumann+c74f20a3",
        "PeterNeumann c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ]:
        with pytest.raises(ConfigError):
            Verifier.from_key_text(bad)
