"""Independent reference implementation of the RFC 9162 Merkle tree algorithms.

This module exists only to serve as an *independent* verifier in tests: it is
written directly from the text of RFC 9162 ("Certificate Transparency Version
2.0"), Section 2.1 "Merkle Hash Trees", and deliberately shares no code with
the production implementation.  It depends on nothing but ``hashlib``.

HASH is SHA-256 (HASH_SIZE = 32): the hash RFC 6962 fixed, and the entry in
RFC 9162's hash algorithm registry (Section 10.2.1).  All values are ``bytes``;
every hash is a 32-byte SHA-256 digest.

Notation follows the RFC: ``D_n = {d[0], ..., d[n-1]}`` is the ordered list of
n raw entries, ``D[k1:k2]`` is the sub-list ``d[k1] .. d[k2-1]``, ``||`` is
byte concatenation, ``:`` is list concatenation, and ``k`` is "the largest
power of two smaller than n" (i.e. ``k < n <= 2k``).

The generators (``mth``, ``inclusion_path``, ``consistency_proof``) are the
recursive definitions of Sections 2.1.1, 2.1.3.1 and 2.1.4.1, transcribed
literally.  The verifiers (``verify_inclusion``, ``verify_consistency``) are
the bit-shifting algorithms of Sections 2.1.3.2 and 2.1.4.2, also transcribed
step by step; they never raise on bad input, they return ``False``.

Source text: draft-ietf-trans-rfc6962-bis-42, the version published as
RFC 9162 (Section 2.1 there is the same algorithm text).

Use from tests as ``from tests import rfc9162``.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "leaf_hash",
    "mth",
    "inclusion_path",
    "consistency_proof",
    "verify_inclusion",
    "verify_consistency",
]

HASH_SIZE = 32  # SHA-256 output size in bytes.

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def _hash(data: bytes) -> bytes:
    """HASH(data): SHA-256 (RFC 9162 Section 2.1.1)."""
    return hashlib.sha256(data).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    """HASH(0x01 || left || right): interior node (RFC 9162 Section 2.1.1)."""
    return _hash(_NODE_PREFIX + left + right)


def _split(n: int) -> int:
    """k: the largest power of two smaller than n, for n > 1 (so k < n <= 2k).

    RFC 9162 Section 2.1.1: "For n > 1, let k be the largest power of two
    smaller than n (i.e., k < n <= 2k)."
    """
    if n < 2:
        raise ValueError("split point is only defined for n > 1")
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _lsb(x: int) -> bool:
    """LSB(x): whether the least significant bit of x is set (RFC 9162 2.1.2)."""
    return (x & 1) == 1


def _is_hash(value: object) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_SIZE


def _is_size(value: object) -> bool:
    # bool is an int subclass; a tree size or index of True/False is a bug.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def leaf_hash(data: bytes) -> bytes:
    """Leaf hash of one raw entry: ``HASH(0x00 || d)``.

    RFC 9162 Section 2.1.1: "The hash of a list with one entry (also known as
    a leaf hash) is: MTH({d[0]}) = HASH(0x00 || d[0])."
    """
    return _hash(_LEAF_PREFIX + bytes(data))


def mth(entries: list[bytes]) -> bytes:
    """Merkle Tree Hash MTH(D_n) of the raw entries ``entries``.

    RFC 9162 Section 2.1.1, recursively:

    * ``MTH({}) = HASH()`` -- the hash of the empty string;
    * ``MTH({d[0]}) = HASH(0x00 || d[0])``;
    * for n > 1, with k the largest power of two smaller than n,
      ``MTH(D_n) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))``.
    """
    entries = list(entries)
    n = len(entries)
    if n == 0:
        return _hash(b"")
    if n == 1:
        return leaf_hash(entries[0])
    k = _split(n)
    return _node_hash(mth(entries[0:k]), mth(entries[k:n]))


def inclusion_path(m: int, entries: list[bytes]) -> list[bytes]:
    """Merkle inclusion proof PATH(m, D_n) for entry d[m], 0 <= m < n.

    RFC 9162 Section 2.1.3.1, recursively:

    * ``PATH(0, {d[0]}) = {}``;
    * for n > 1, with k the largest power of two smaller than n,
      ``PATH(m, D_n) = PATH(m, D[0:k]) : MTH(D[k:n])`` for m < k, and
      ``PATH(m, D_n) = PATH(m - k, D[k:n]) : MTH(D[0:k])`` for m >= k.

    The list runs from the leaf's sibling up to the root's child.  Raises
    ``ValueError`` when m is outside ``0 <= m < n`` (the RFC defines PATH
    only there; in particular there is no proof for an empty tree).
    """
    entries = list(entries)
    n = len(entries)
    if not _is_size(m) or m >= n:
        raise ValueError(f"PATH(m, D_n) needs 0 <= m < n; got m={m!r}, n={n}")
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return inclusion_path(m, entries[0:k]) + [mth(entries[k:n])]
    return inclusion_path(m - k, entries[k:n]) + [mth(entries[0:k])]


def _subproof(m: int, entries: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D_n, b) of RFC 9162 Section 2.1.4.1 (1 <= m <= n)."""
    n = len(entries)
    if m == n:
        # SUBPROOF(m, D_m, true) = {}; SUBPROOF(m, D_m, false) = {MTH(D_m)}
        return [] if b else [mth(entries)]
    k = _split(n)  # m < n here, so n >= 2.
    if m <= k:
        # SUBPROOF(m, D_n, b) = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
        return _subproof(m, entries[0:k], b) + [mth(entries[k:n])]
    # SUBPROOF(m, D_n, b) = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
    return _subproof(m - k, entries[k:n], False) + [mth(entries[0:k])]


def consistency_proof(m: int, entries: list[bytes]) -> list[bytes]:
    """Merkle consistency proof PROOF(m, D_n) from MTH(D[0:m]) to MTH(D_n).

    RFC 9162 Section 2.1.4.1: ``PROOF(m, D_n) = SUBPROOF(m, D_n, true)``,
    where ``SUBPROOF(m, D_m, true) = {}``, ``SUBPROOF(m, D_m, false) =
    {MTH(D_m)}``, and for m < n, with k the largest power of two smaller
    than n, ``SUBPROOF(m, D_n, b) = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])``
    if m <= k, else ``SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])``.

    The RFC defines PROOF for 0 < m < n; for m == n this returns ``[]``,
    which is what ``SUBPROOF(m, D_m, true)`` gives.  Raises ``ValueError``
    for m <= 0 or m > n (there is no consistency proof from the empty tree
    in the RFC).
    """
    entries = list(entries)
    n = len(entries)
    if not _is_size(m) or m == 0 or m > n:
        raise ValueError(f"PROOF(m, D_n) needs 0 < m <= n; got m={m!r}, n={n}")
    return _subproof(m, entries, True)


def verify_inclusion(
    leaf_index: int,
    tree_size: int,
    leaf: bytes,
    path: list[bytes],
    root: bytes,
) -> bool:
    """Verify an inclusion proof, RFC 9162 Section 2.1.3.2.

    ``leaf`` is the leaf *hash* (``leaf_hash(d)``), not the raw entry.
    Returns True only if ``path`` proves that ``leaf`` is at ``leaf_index``
    in the tree of ``tree_size`` leaves whose root hash is ``root``.

    The RFC's steps:

    1. If leaf_index >= tree_size, fail.
    2. Set fn to leaf_index and sn to tree_size - 1.
    3. Set r to hash.
    4. For each value p in the inclusion_path array:
       a. If sn is 0, stop and fail.
       b. If LSB(fn) is set, or fn == sn: set r to HASH(0x01 || p || r);
          then, if LSB(fn) is not set, right-shift fn and sn equally until
          either LSB(fn) is set or fn is 0.
          Otherwise: set r to HASH(0x01 || r || p).
       c. Right-shift both fn and sn one time.
    5. Succeed iff sn is 0 and r equals root_hash.

    Additionally (input hygiene, not an RFC step) every hash must be exactly
    HASH_SIZE bytes and the integers must be non-negative; anything else is
    a failed verification rather than an exception.
    """
    try:
        if not (_is_size(leaf_index) and _is_size(tree_size)):
            return False
        if not (_is_hash(leaf) and _is_hash(root)):
            return False
        path = list(path)
        if not all(_is_hash(p) for p in path):
            return False
    except TypeError:
        return False

    # 1.
    if leaf_index >= tree_size:
        return False
    # 2.
    fn = leaf_index
    sn = tree_size - 1
    # 3.
    r = bytes(leaf)
    # 4.
    for p in path:
        p = bytes(p)
        # a.
        if sn == 0:
            return False
        # b.
        if _lsb(fn) or fn == sn:
            r = _node_hash(p, r)
            if not _lsb(fn):
                while not (_lsb(fn) or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node_hash(r, p)
        # c.
        fn >>= 1
        sn >>= 1
    # 5.
    return sn == 0 and r == bytes(root)


def verify_consistency(
    first: int,
    second: int,
    first_root: bytes,
    second_root: bytes,
    proof: list[bytes],
) -> bool:
    """Verify a consistency proof, RFC 9162 Section 2.1.4.2.

    Returns True only if ``proof`` shows that the tree of ``first`` leaves
    with root ``first_root`` is a prefix of the tree of ``second`` leaves
    with root ``second_root``.

    The RFC's algorithm is stated for ``0 < first < second``:

    1. If consistency_path is empty, fail.
    2. If first is an exact power of 2, prepend first_hash to
       consistency_path.
    3. Set fn to first - 1 and sn to second - 1.
    4. If LSB(fn) is set, right-shift fn and sn equally until LSB(fn) is
       not set.
    5. Set both fr and sr to the first value in consistency_path.
    6. For each subsequent value c in consistency_path:
       a. If sn is 0, stop and fail.
       b. If LSB(fn) is set, or fn == sn: set fr to HASH(0x01 || c || fr)
          and sr to HASH(0x01 || c || sr); then, if LSB(fn) is not set,
          right-shift fn and sn equally until either LSB(fn) is set or fn
          is 0.  Otherwise: set sr to HASH(0x01 || sr || c).
       c. Right-shift both fn and sn one time.
    7. Succeed iff fr == first_hash, sr == second_hash and sn == 0.

    Outside that range (choices of this module, not RFC steps):

    * ``first == second`` (including 0 == 0): nothing to prove; succeed iff
      ``proof`` is empty and the two roots are equal.
    * ``first == 0 < second``: the RFC gives no algorithm (PROOF(m, D_n) is
      defined only for 0 < m), so this returns False.
    * ``first > second``, negative sizes, or any hash that is not exactly
      HASH_SIZE bytes: False.
    """
    try:
        if not (_is_size(first) and _is_size(second)):
            return False
        if not (_is_hash(first_root) and _is_hash(second_root)):
            return False
        path = list(proof)
        if not all(_is_hash(c) for c in path):
            return False
        path = [bytes(c) for c in path]
    except TypeError:
        return False
    first_hash = bytes(first_root)
    second_hash = bytes(second_root)

    if first > second:
        return False
    if first == second:
        return len(path) == 0 and first_hash == second_hash
    if first == 0:
        return False

    # Now 0 < first < second, the RFC's precondition.
    # 1.
    if len(path) == 0:
        return False
    # 2.
    if first & (first - 1) == 0:
        path = [first_hash] + path
    # 3.
    fn = first - 1
    sn = second - 1
    # 4.
    while _lsb(fn):
        fn >>= 1
        sn >>= 1
    # 5.
    fr = path[0]
    sr = path[0]
    # 6.
    for c in path[1:]:
        # a.
        if sn == 0:
            return False
        # b.
        if _lsb(fn) or fn == sn:
            fr = _node_hash(c, fr)
            sr = _node_hash(c, sr)
            if not _lsb(fn):
                while not (_lsb(fn) or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _node_hash(sr, c)
        # c.
        fn >>= 1
        sn >>= 1
    # 7.
    return fr == first_hash and sr == second_hash and sn == 0
