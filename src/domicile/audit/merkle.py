"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

Pure functions and one in-memory tree; no I/O.  The hashing is exactly the
Certificate Transparency one so that any third-party verifier agrees with us:

- leaf hash ``SHA-256(0x00 || entry)``, node hash ``SHA-256(0x01 || left || right)``;
- the tree over ``n`` entries splits at ``k``, the largest power of two
  strictly below ``n`` (not the midpoint: both build a tree, only this one is
  interoperable);
- the empty tree's hash is ``SHA-256("")``.

Proofs are lists of 32-byte hashes ordered from the leaf towards the root, as
in RFC 6962 §2.1.1 to 2.1.2; the verifiers are the algorithms of RFC 9162
§2.1.3.2 and §2.1.4.2 and return ``False`` (never raise) for any wrong input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """The RFC 6962 hash of one log entry: ``SHA-256(0x00 || entry)``."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 6962 hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly below *n* (``n >= 2``): where RFC 6962 splits."""
    if n < 2:
        raise ValueError(f"a tree of {n} leaves has no split point")
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(leaf_hashes: Iterable[bytes]) -> bytes:
    """The root hash of the tree whose leaves have these hashes, in one pass.

    Keeps a stack of the roots of the complete subtrees seen so far (at most
    log2(n) of them), merging two equal-sized ones as soon as they exist, then
    folds the stack from the right.  The fold from the right is what makes the
    result equal to the RFC's recursive split at the largest power of two.
    """
    stack: list[bytes] = []
    for count, h in enumerate(leaf_hashes, start=1):
        stack.append(h)
        # One merge per trailing zero bit of the new size: each completes a subtree.
        n = count
        while not n & 1:
            right = stack.pop()
            stack[-1] = _sha256(b"\x01" + stack[-1] + right).digest()
            n >>= 1
    if not stack:
        return EMPTY_ROOT
    root = stack[-1]
    for left in reversed(stack[:-1]):
        root = _sha256(b"\x01" + left + root).digest()
    return root


def root_of_entries(entries: Iterable[bytes]) -> bytes:
    """The root hash of the tree over these raw entries."""
    return root_from_leaf_hashes(leaf_hash(e) for e in entries)


class MerkleTree:
    """An append-only RFC 6962 tree that keeps every complete subtree's hash.

    Level ``h`` holds, packed in one ``bytearray``, the hashes of the complete
    subtrees of ``2**h`` leaves, left to right: about 64 bytes per leaf in all
    (a million leaves take 64 MB, with no per-hash Python object).  With them
    the root of any prefix and any inclusion or consistency proof costs
    O(log² n) hashes instead of rehashing the leaves.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """The number of leaves."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def append(self, leaf: bytes) -> None:
        """Add a leaf given by its leaf hash (see :func:`leaf_hash`)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, not {len(leaf)}")
        levels = self._levels
        levels[0] += leaf
        self._size += 1
        n = self._size
        height = 0
        # Completing a subtree at this height also completes its parent when
        # the count there becomes even: one node per trailing zero bit.
        while not n & 1:
            level = levels[height]
            end = len(level)
            parent = _sha256(b"\x01" + level[end - 2 * HASH_SIZE : end]).digest()
            height += 1
            if height == len(levels):
                levels.append(bytearray())
            levels[height] += parent
            n >>= 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add several leaves given by their leaf hashes.

        Level by level rather than leaf by leaf: the new leaves are packed in
        one go, then each level hashes the pairs it newly completed.  Same
        hashes as repeated :meth:`append`, a fraction of the interpreter work.
        """
        hashes = leaf_hashes if isinstance(leaf_hashes, list | tuple) else list(leaf_hashes)
        packed = b"".join(hashes)
        if len(packed) != HASH_SIZE * len(hashes) or any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError(f"every leaf hash has {HASH_SIZE} bytes")
        self.extend_packed(packed)

    def extend_packed(self, packed: bytes | bytearray) -> None:
        """Add leaves given as their leaf hashes laid end to end (32 bytes each).

        What :meth:`extend` does after packing; a writer that keeps the
        hashes it appended packed hands them over without one object each.
        """
        if len(packed) % HASH_SIZE:
            raise ValueError(f"packed leaf hashes come in {HASH_SIZE}-byte units")
        if not packed:
            return
        levels = self._levels
        levels[0] += packed
        pair = 2 * HASH_SIZE
        height = 0
        while len(levels[height]) >= pair:
            if height + 1 == len(levels):
                levels.append(bytearray())
            level, parents = levels[height], levels[height + 1]
            # Pairs complete at this level that have no parent yet.
            first = len(parents) // HASH_SIZE * pair
            last = len(level) // pair * pair
            if first >= last:
                break
            sha256 = _sha256
            parents += b"".join(
                [sha256(b"\x01" + level[o : o + pair]).digest() for o in range(first, last, pair)]
            )
            height += 1
        # Last: a reader sees the new size only once every node above it exists.
        self._size += len(packed) // HASH_SIZE

    def leaf(self, index: int) -> bytes:
        """The leaf hash at *index*."""
        self._check_range(index, index + 1)
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def subtree_root(self, start: int, end: int) -> bytes:
        """The RFC 6962 hash of the leaves ``[start, end)`` (``end > start``)."""
        self._check_range(start, end)
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            # A complete, aligned subtree: stored at its height.
            height = n.bit_length() - 1
            offset = (start >> height) * HASH_SIZE
            return bytes(self._levels[height][offset : offset + HASH_SIZE])
        k = split_point(n)
        return node_hash(self.subtree_root(start, start + k), self.subtree_root(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """The root hash of the first *size* leaves (default: all of them)."""
        size = self._size if size is None else size
        if size == 0:
            return EMPTY_ROOT
        return self.subtree_root(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf *index* in the tree of the first *size* leaves."""
        size = self._size if size is None else size
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
        self._check_range(0, size)
        return inclusion_proof_from(self.subtree_root, index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The proof that the first *old_size* leaves are a prefix of the first *new_size*."""
        new_size = self._size if new_size is None else new_size
        if not 0 <= old_size <= new_size <= self._size:
            raise ValueError(
                f"no consistency proof from size {old_size} to {new_size} "
                f"in a tree of {self._size} leaves"
            )
        return consistency_proof_from(self.subtree_root, old_size, new_size)

    def _check_range(self, start: int, end: int) -> None:
        if not 0 <= start < end <= self._size:
            raise ValueError(f"leaves [{start}, {end}) are not in a tree of {self._size} leaves")


SubtreeRoot = Callable[[int, int], bytes]


def inclusion_proof_from(subtree_root: SubtreeRoot, index: int, size: int) -> list[bytes]:
    """RFC 6962 PATH(index, D[size]) given a function for the hash of a leaf range.

    Walks down from the root: at each split the sibling's hash joins the
    proof; collected top-down, returned leaf-first as the RFC orders it.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:
            path.append(subtree_root(start + k, end))
            end = start + k
        else:
            path.append(subtree_root(start, start + k))
            start += k
    path.reverse()
    return path


def consistency_proof_from(subtree_root: SubtreeRoot, old_size: int, new_size: int) -> list[bytes]:
    """RFC 6962 PROOF(old_size, D[new_size]) given a function for the hash of a leaf range.

    The iterative form of SUBPROOF(m, D[n], b): the proof is empty when the
    sizes are equal or the old tree is empty.
    """
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    path: list[bytes] = []
    start, end, m = 0, new_size, old_size
    # b of SUBPROOF: True while the old tree's root is a node of the new tree,
    # in which case the verifier knows it and the proof omits it.
    whole = True
    while m != end - start:
        k = split_point(end - start)
        if m <= k:
            path.append(subtree_root(start + k, end))
            end = start + k
        else:
            path.append(subtree_root(start, start + k))
            start += k
            m -= k
            whole = False
    if not whole:
        path.append(subtree_root(start, end))
    path.reverse()
    return path


def inclusion_proof(
    leaf_hashes: Sequence[bytes], index: int, size: int | None = None
) -> list[bytes]:
    """The inclusion proof of leaf *index* among the first *size* of *leaf_hashes*."""
    size = len(leaf_hashes) if size is None else size
    if size > len(leaf_hashes):
        raise ValueError(f"a tree of {size} leaves needs more than {len(leaf_hashes)} leaf hashes")
    return MerkleTree(leaf_hashes[i] for i in range(size)).inclusion_proof(index)


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """The consistency proof between the first *old_size* and *new_size* of *leaf_hashes*."""
    if new_size > len(leaf_hashes):
        raise ValueError(f"a tree of {new_size} leaves needs more than {len(leaf_hashes)} hashes")
    return MerkleTree(leaf_hashes[i] for i in range(new_size)).consistency_proof(old_size)


def _valid_hashes(*hashes: bytes) -> bool:
    return all(isinstance(h, bytes | bytearray) and len(h) == HASH_SIZE for h in hashes)


def root_from_inclusion_proof(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes]
) -> bytes | None:
    """The root implied by an inclusion proof (RFC 9162 §2.1.3.2), or None if malformed."""
    if not 0 <= index < size or not _valid_hashes(leaf, *proof):
        return None
    fn, sn = index, size - 1
    r = bytes(leaf)
    for p in proof:
        if sn == 0:
            return None  # the proof is longer than the path to the root
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # A right-edge node with no right sibling at these levels: skip them.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None  # the proof stops short of the root
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """True when *proof* shows the leaf hash *leaf* at *index* in the tree of *size* and *root*."""
    computed = root_from_inclusion_proof(index, size, leaf, proof)
    return computed is not None and len(root) == HASH_SIZE and computed == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True when *proof* shows the tree (old_size, old_root) is a prefix of (new_size, new_root).

    RFC 9162 §2.1.4.2.  Equal sizes need an empty proof and equal roots; an
    empty old tree needs an empty proof and the empty-tree hash.
    """
    if not 0 <= old_size <= new_size or not _valid_hashes(old_root, new_root, *proof):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old root is itself a node of the new tree; the proof leaves it out.
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
