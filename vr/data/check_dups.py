"""Duplicates for `vr data check`: exact copies (same file bytes) and near-duplicates (perceptual
hashes within a Hamming distance), within one split and, the finding that matters most, across
train/val/test.

Near-duplicates are found between distinct perceptual hashes (images with the same hash form one
group), so a set of many identical-looking images costs one comparison per distinct hash pair,
not per image pair. Exact copies are reported as exact only, never again as near.
"""

from __future__ import annotations

from collections import Counter, defaultdict

SPLIT_ORDER = ("train", "val", "test")
MAX_NEAR_PAIRS = 2_000_000  # stop collecting near pairs past this (a set of near-identical images)
LISTED = 100  # duplicate groups / pairs kept in the JSON report

_BLOCK = 128  # rows of the pairwise distance matrix computed at once
_TILE = 8192  # columns: 128 x 8192 uint64 (8 MB) at a time, whatever the number of images


def _order(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else -1


def _pair_key(later: str, earlier: str) -> str:
    return f"{later}/{earlier}"


def _earlier(split: str, present) -> list[str]:
    """Splits of ``present`` that come before ``split`` in train, val, test."""
    k = _order(split)
    return [s for s in SPLIT_ORDER[:max(k, 0)] if s in present] if k > 0 else []


def exact_duplicates(items) -> dict:
    """Groups of readable files with the same bytes hash, cross-split groups listed first."""
    groups: dict[str, list] = defaultdict(list)
    for it in items:
        if it.facts.problem is None:
            groups[it.facts.digest].append(it)
    dups = [g for g in groups.values() if len(g) > 1]
    cross: Counter = Counter()
    copies: Counter = Counter()  # extra copies inside one class of one split
    conflicts: Counter = Counter()  # groups whose copies sit in two classes of one split
    listed = []
    for g in dups:
        splits = {it.split for it in g}
        for it in g:
            for a in _earlier(it.split, splits):
                cross[_pair_key(it.split, a)] += 1
        kind = "cross_split" if len(splits) > 1 else "same_class"
        for s in splits:
            labels = Counter(it.label for it in g if it.split == s)
            if len(labels) > 1 and None not in labels:
                conflicts[s] += 1
                kind = "label_conflict" if kind != "cross_split" else kind
            copies[s] += sum(n - 1 for n in labels.values())
        listed.append({"kind": kind, "size": len(g), "files": [it.rel for it in g[:10]],
                       "labels": sorted({it.label for it in g if it.label is not None})})
    rank = {"cross_split": 0, "label_conflict": 1, "same_class": 2}
    listed.sort(key=lambda d: (rank[d["kind"]], -d["size"], d["files"][0]))
    return {"groups": len(dups), "images": sum(len(g) for g in dups), "cross_split": dict(cross),
            "same_class_copies": {s: n for s, n in copies.items() if n}, "label_conflicts": dict(conflicts),
            "listed": listed[:LISTED]}


def _popcount(x):
    import numpy as np

    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)


def hash_pairs(hashes: list[int], max_distance: int, limit: int = MAX_NEAR_PAIRS):
    """(i, j, distance) for i < j among distinct ``hashes`` with 0 < distance <= max_distance,
    and whether the search stopped at ``limit`` pairs. Tiles of _BLOCK x _TILE distances at a
    time: the memory in use does not grow with the number of images (benchmarks/scale.py)."""
    import numpy as np

    arr = np.array(hashes, dtype=np.uint64)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, len(arr), _BLOCK):
        rows = arr[start:start + _BLOCK]
        found = []
        for col in range(start, len(arr), _TILE):  # the upper triangle and the block's diagonal
            d = _popcount(rows[:, None] ^ arr[None, col:col + _TILE])
            ii, jj = np.nonzero(d <= max_distance)
            keep = jj + (col - start) > ii
            found.append((ii[keep], jj[keep] + col, d[ii[keep], jj[keep]]))
        ii, jj, dd = (np.concatenate(x) for x in zip(*found))
        order = np.lexsort((jj, ii))  # row-major, as one block-wide matrix would give them
        pairs += zip((ii[order] + start).tolist(), jj[order].tolist(), dd[order].astype(int).tolist())
        if len(pairs) >= limit:
            return pairs[:limit], True
    return pairs, False


class _Groups:
    """Readable images grouped by perceptual hash, with the counts near_duplicates needs."""

    def __init__(self, items):
        self.items = [it for it in items if it.facts.problem is None and it.facts.phash is not None]
        by_hash: dict[int, list[int]] = defaultdict(list)
        for k, it in enumerate(self.items):
            by_hash[it.facts.phash].append(k)
        self.hashes = list(by_hash)
        self.members = list(by_hash.values())
        self.group_of = {k: g for g, ms in enumerate(self.members) for k in ms}
        self.split_count = [Counter(self.items[k].split for k in ms) for ms in self.members]
        self.copy_count = [Counter((self.items[k].split, self.items[k].facts.digest) for k in ms)
                           for ms in self.members]

    def within_group_pairs(self) -> int:
        """Pairs of different files sharing a hash (exact copies excluded)."""
        total = 0
        for ms in self.members:
            n = len(ms)
            same = Counter(self.items[k].facts.digest for k in ms)
            total += n * (n - 1) // 2 - sum(m * (m - 1) // 2 for m in same.values())
        return total


def near_duplicates(items, max_distance: int) -> dict:
    """Images with a near-duplicate (not an exact copy) in an earlier split or their own."""
    gs = _Groups(items)
    pairs, truncated = hash_pairs(gs.hashes, max_distance)
    neighbours: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for a, b, d in pairs:
        neighbours[a].append((b, d))
        neighbours[b].append((a, d))
    nb_splits = {g: set().union(*(gs.split_count[h] for h, _ in nb)) for g, nb in neighbours.items()}

    def has_near(k: int, split: str) -> bool:
        """Another file of ``split`` with the same hash (not an exact copy of k) or a near hash."""
        it, g = gs.items[k], gs.group_of[k]
        return (gs.split_count[g][split] - gs.copy_count[g][(split, it.facts.digest)] > 0
                or split in nb_splits.get(g, ()))

    cross: Counter = Counter()
    within: Counter = Counter()
    cross_examples, within_examples = [], []
    for k, it in enumerate(gs.items):
        for a in _earlier(it.split, SPLIT_ORDER):
            if has_near(k, a):
                cross[_pair_key(it.split, a)] += 1
                if len(cross_examples) < LISTED:
                    cross_examples.append(_example(gs, neighbours, k, a))
        if has_near(k, it.split):
            within[it.split] += 1
            if len(within_examples) < LISTED:
                within_examples.append(_example(gs, neighbours, k, it.split))
    n_pairs = gs.within_group_pairs() + sum(len(gs.members[a]) * len(gs.members[b]) for a, b, _ in pairs)
    listed = [e for e in cross_examples + within_examples if e is not None]
    return {"max_distance": max_distance, "pairs": n_pairs, "truncated": truncated, "cross_split": dict(cross),
            "within_split": dict(within), "listed": listed[:LISTED]}


def _example(gs: _Groups, neighbours, k: int, split: str) -> dict | None:
    """One partner of image ``k`` in ``split``: same hash first, then the nearest neighbour hash."""
    it, g = gs.items[k], gs.group_of[k]
    nearest = sorted(neighbours.get(g, []), key=lambda x: x[1])
    candidates = [(m, 0) for m in gs.members[g]] + [(m, d) for h, d in nearest for m in gs.members[h]]
    for m, d in candidates:
        other = gs.items[m]
        if m != k and other.split == split and other.facts.digest != it.facts.digest:
            return {"files": [it.rel, other.rel], "distance": d, "splits": [it.split, other.split],
                    "labels": [it.label, other.label]}
    return None
