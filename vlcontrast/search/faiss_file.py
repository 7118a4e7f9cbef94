"""A saved faiss index, as a file a stranger may hand over.

faiss's own reader (``faiss.read_index``) is a C++ parser that trusts the sizes and offsets in the
file, so an index is saved as what it is made of, in safetensors (``faiss.safetensors``: the HNSW
graph, or the IVF-PQ centroids, codes and ids; nothing for flat; :func:`faiss_arrays`), and
loaded (:func:`load_index`) by checking every array's type, shape and range (a neighbour or id
inside the collection, sizes that add up) before handing the arrays to a new faiss index through
its API. The vectors come from the collection's own ``.npy`` units. A file that fails a check
raises :class:`BadFaissIndex` with what failed, and faiss never sees it.
"""

from __future__ import annotations

from typing import NoReturn

import numpy as np

from vlcontrast.search.layout import IndexFiles

FAISS_FORMAT = 2  # 1: faiss's own file (faiss.index), no longer read
FAISS_ARRAYS = "faiss.safetensors"


def faiss_arrays(faiss, index, kind: str) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """What ``index`` is made of, less the stored vectors: arrays for safetensors and the
    graph's two numbers (entry point, top level) for the json."""
    if kind == "flat":
        return {}, {}
    if kind == "hnsw":
        hnsw = index.hnsw
        arrays = {
            "levels": faiss.vector_to_array(hnsw.levels).astype(np.int32),
            "offsets": faiss.vector_to_array(hnsw.offsets).astype(np.int64),
            "neighbors": faiss.vector_to_array(hnsw.neighbors).astype(np.int32),
        }
        return arrays, {"entry_point": int(hnsw.entry_point), "max_level": int(hnsw.max_level)}
    lists, quantizer = index.invlists, faiss.downcast_index(index.quantizer)
    sizes = np.array([lists.list_size(i) for i in range(index.nlist)], dtype=np.int64)
    ids = [faiss.rev_swig_ptr(lists.get_ids(i), int(s)).copy() for i, s in enumerate(sizes)]
    codes = [
        faiss.rev_swig_ptr(lists.get_codes(i), int(s) * lists.code_size).copy()
        for i, s in enumerate(sizes)
    ]
    arrays = {
        "centroids": faiss.vector_to_array(quantizer.codes)
        .view(np.float32)
        .reshape(index.nlist, -1),
        "pq_centroids": faiss.vector_to_array(index.pq.centroids).reshape(
            index.pq.M, index.pq.ksub, index.pq.dsub
        ),
        "list_sizes": sizes,
        "ids": np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64),
        "codes": np.concatenate(codes).reshape(-1, index.pq.code_size).astype(np.uint8),
    }
    return arrays, {}


class BadFaissIndex(ValueError):
    """A saved faiss index that fails a check: refused, never handed to faiss."""


def refuse(index_dir, what: str) -> NoReturn:
    raise BadFaissIndex(
        f"{index_dir}: the saved faiss index is not valid ({what}); rebuild it with "
        f"'vlcontrast index build ... --faiss KIND', or search it with '--backend exact'"
    )


def check(ok, index_dir, what: str) -> None:
    if not ok:
        refuse(index_dir, what)


def checked_array(arrays: dict, name: str, dtype, shape: tuple, index_dir) -> np.ndarray:
    """``arrays[name]``, checked: present, of ``dtype``, of ``shape`` (None: any length)."""
    array = arrays.get(name)
    check(array is not None, index_dir, f"no {name!r} array")
    check(array.dtype == np.dtype(dtype), index_dir, f"{name!r} is {array.dtype}, not {dtype}")
    check(
        array.ndim == len(shape)
        and all(s is None or s == a for s, a in zip(shape, array.shape, strict=True)),
        index_dir,
        f"{name!r} has shape {array.shape}, not {tuple('*' if s is None else s for s in shape)}",
    )
    return array


def load_hnsw(faiss, files: IndexFiles, params: dict, graph: dict, arrays: dict):
    """A new HNSW index over the stored vectors, its graph checked then copied in: every
    neighbour a row of the collection (or -1), each node's slots what its level gives, the entry
    point on the top level, so faiss's search never reads outside its arrays."""
    n, where = len(files), files.index_dir
    index = new_faiss_index(faiss, "hnsw", files.dim, params)
    slots = faiss.vector_to_array(index.hnsw.cum_nneighbor_per_level).astype(np.int64)
    levels = checked_array(arrays, "levels", np.int32, (n,), where)
    offsets = checked_array(arrays, "offsets", np.int64, (n + 1,), where)
    neighbors = checked_array(arrays, "neighbors", np.int32, (None,), where)
    check(arrays.keys() == {"levels", "offsets", "neighbors"}, where, "unexpected arrays")
    check(
        not n or (levels.min() >= 1 and levels.max() < len(slots)), where, "a level is out of range"
    )
    check(
        offsets[0] == 0 and offsets[-1] == len(neighbors),
        where,
        "offsets do not span the neighbours",
    )
    check(
        np.array_equal(np.diff(offsets), slots[levels]),
        where,
        "a node's slots do not match its level",
    )
    check(
        not len(neighbors) or (neighbors.min() >= -1 and neighbors.max() < n),
        where,
        "a neighbour is not a row of the collection",
    )
    # a link on level l must lead to a node that has level l: faiss reads that node's level-l
    # slots next, which a lower node does not have (the next node's, or past the array's end)
    upper = np.flatnonzero(levels >= 2)  # nodes with slots above level 0: about n / M of them
    counts = offsets[upper + 1] - offsets[upper] - slots[1]  # each one's slots above level 0
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    within = within + slots[1]  # every such slot's place in its node's slots
    level = np.searchsorted(slots, within, "right") - 1
    linked = neighbors[np.repeat(offsets[upper], counts) + within]
    check(
        (levels[linked[linked >= 0]] > level[linked >= 0]).all(),
        where,
        "a link leads to a node below its level",
    )
    try:
        entry, top = int(graph["entry_point"]), int(graph["max_level"])
    except (KeyError, TypeError, ValueError):
        refuse(where, "no entry point in faiss.json")
    if n:
        check(
            0 <= entry < n and top == levels.max() - 1 == levels[entry] - 1,
            where,
            "the entry point is not on the top level",
        )
    else:
        check(entry == -1 and top == -1, where, "an empty graph with an entry point")
    for _, block in files.blocks():
        index.storage.add(block)
    faiss.copy_array_to_vector(levels, index.hnsw.levels)
    faiss.copy_array_to_vector(offsets.astype(np.uint64), index.hnsw.offsets)
    faiss.copy_array_to_vector(neighbors, index.hnsw.neighbors)
    index.hnsw.entry_point, index.hnsw.max_level, index.ntotal = entry, top, n
    return index


def load_ivfpq(faiss, files: IndexFiles, params: dict, arrays: dict):
    """A new IVF-PQ index: the coarse and PQ centroids, then each list's ids and codes, checked
    (ids are rows of the collection, list sizes add up to it, centroids are finite)."""
    n, dim, where = len(files), files.dim, files.index_dir
    nlist, m = params["nlist"], params["pq_m"]
    index = new_faiss_index(faiss, "ivfpq", dim, params)
    pq = index.pq
    centroids = checked_array(arrays, "centroids", np.float32, (nlist, dim), where)
    pq_centroids = checked_array(arrays, "pq_centroids", np.float32, (m, pq.ksub, pq.dsub), where)
    sizes = checked_array(arrays, "list_sizes", np.int64, (nlist,), where)
    ids = checked_array(arrays, "ids", np.int64, (n,), where)
    codes = checked_array(arrays, "codes", np.uint8, (n, pq.code_size), where)
    check(
        arrays.keys() == {"centroids", "pq_centroids", "list_sizes", "ids", "codes"},
        where,
        "unexpected arrays",
    )
    check(
        np.isfinite(centroids).all() and np.isfinite(pq_centroids).all(),
        where,
        "a centroid is not finite",
    )
    check(
        (sizes >= 0).all() and sizes.sum() == n, where, "the list sizes do not add up to the rows"
    )
    check(
        not n or (ids.min() >= 0 and ids.max() < n), where, "an id is not a row of the collection"
    )
    index.quantizer.add(np.ascontiguousarray(centroids))
    faiss.copy_array_to_vector(np.ascontiguousarray(pq_centroids).reshape(-1), pq.centroids)
    index.is_trained = True
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    for i in range(nlist):
        if sizes[i]:
            a, b = int(bounds[i]), int(bounds[i + 1])
            list_ids, list_codes = np.ascontiguousarray(ids[a:b]), np.ascontiguousarray(codes[a:b])
            index.invlists.add_entries(
                i, b - a, faiss.swig_ptr(list_ids), faiss.swig_ptr(list_codes)
            )
    index.ntotal = n
    return index


def new_faiss_index(faiss, kind: str, dim: int, params: dict[str, int]):
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
        return index
    quantizer = faiss.IndexFlatIP(dim)
    return faiss.IndexIVFPQ(
        quantizer, dim, params["nlist"], params["pq_m"], 8, faiss.METRIC_INNER_PRODUCT
    )


def load_index(faiss, files: IndexFiles, kind: str, params: dict[str, int], info: dict):
    """A new faiss index of ``kind`` over ``files``, from the checked ``faiss.safetensors``
    beside them and the graph's numbers in ``info`` (``faiss.json``)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    where = files.index_dir
    try:
        arrays = load_file(where / FAISS_ARRAYS) if kind != "flat" else {}
    except (OSError, SafetensorError) as error:
        refuse(where, f"{FAISS_ARRAYS}: {error}")
    if kind == "flat":
        index = new_faiss_index(faiss, kind, files.dim, params)
        for _, block in files.blocks():
            index.add(block)
        return index
    if kind == "hnsw":
        graph = info.get("graph")
        check(isinstance(graph, dict), where, "no graph in faiss.json")
        return load_hnsw(faiss, files, params, graph, arrays)
    return load_ivfpq(faiss, files, params, arrays)
