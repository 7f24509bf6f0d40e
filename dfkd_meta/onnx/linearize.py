"""The unit graph of SPEC §9.1: Jacobians of a network's linearised paths, and its Laplacian eigenbasis.

Linearising replaces every element-wise activation by the identity and max pooling by average
pooling over the same window; the path from tensor S to tensor D is then affine in S, so
column j of its Jacobian is ``f(e_j) - f(0)`` with every other graph input held at zero.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import eigsh

from ..errors import DfkdError
from .graph import OnnxModule
from .inspect import ACTIVATION_OPS
from .ops import OPS, average_pool, global_average_pool, identity

DENSE_EIGEN_MAX_NODES = 2000  # below this, a dense eigensolver is faster and exact

LINEARISED_OPS = {**{name: identity for name in ACTIVATION_OPS},
                  "MaxPool": lambda i, a: average_pool(i, {**a, "count_include_pad": 1}),
                  "GlobalMaxPool": global_average_pool}


def linearised_module(model: onnx.ModelProto, source: str = "model") -> OnnxModule:
    """The model with activations as identities and max pooling as average pooling, in float64."""
    assert set(LINEARISED_OPS) <= set(OPS) | {"GlobalMaxPool"}
    return OnnxModule(model, ops=LINEARISED_OPS, source=source).double()


@torch.no_grad()
def jacobian_block(module: OnnxModule, src: str, dst: str, src_shape: Sequence[int], input_shape: Sequence[int],
                   chunk: int = 256) -> sp.csr_matrix:
    """|J| of the linearised path src -> dst as a sparse [units(dst), units(src)] matrix.

    The graph is run once (per chunk size) from the zero input with src held at zero; each chunk of unit
    vectors then runs only the nodes on the paths from src to dst, reading every other tensor they need
    (a skip connection from before src, a shape computed from the batch) from that run.
    """
    units = math.prod(src_shape)
    nodes, frontier = module.path_nodes(src, dst)
    if not any(dst in module.nodes[k].outputs for k in nodes):
        nodes = None  # dst does not depend on src through the graph: the full run says so (J = 0)
    held: dict[int, dict[str, torch.Tensor]] = {}

    def held_run(n: int) -> dict[str, torch.Tensor]:
        """Every tensor the path reads besides src, and dst, at batch n from the zero input (src at zero)."""
        if n not in held:
            x0 = torch.zeros(n, *input_shape, dtype=torch.float64)
            held[n] = module.run(x0, taps=[dst, *(frontier if nodes is not None else [])],
                                 inject={src: torch.zeros(n, *src_shape, dtype=torch.float64)})
        return held[n]

    base = held_run(min(chunk, units))[dst][:1].reshape(1, -1)
    rows, cols, vals = [], [], []
    for start in range(0, units, chunk):
        n = min(chunk, units - start)
        basis = torch.zeros(n, units, dtype=torch.float64)
        basis[torch.arange(n), torch.arange(start, start + n)] = 1.0
        if nodes is None:
            x = torch.zeros(n, *input_shape, dtype=torch.float64)
            out = module.run(x, taps=[dst], inject={src: basis.reshape(n, *src_shape)})[dst]
        else:
            feed = {name: held_run(n)[name] for name in frontier}
            out = module.run_nodes({**feed, src: basis.reshape(n, *src_shape)}, nodes, [dst])[dst]
        out = out.reshape(n, -1) - base
        j, r = torch.nonzero(out, as_tuple=True)  # out[j, r] = J[r, start + j]
        rows.append(r.numpy())
        cols.append(j.numpy() + start)
        vals.append(out[j, r].abs().numpy())
    size_dst = base.shape[1]
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(size_dst, units))


def adjacency(blocks: Sequence[sp.spmatrix], sizes: Sequence[int]) -> sp.csr_matrix:
    """Symmetric adjacency of a chain of layers from the blocks |J_i| (layer i -> layer i+1)."""
    n = sum(sizes)
    off = np.cumsum([0, *sizes])
    parts = []
    for i, block in enumerate(blocks):
        coo = sp.coo_matrix(block)
        parts.append(sp.coo_matrix((coo.data, (coo.row + off[i + 1], coo.col + off[i])), shape=(n, n)))
    a = sum(parts, sp.coo_matrix((n, n))).tocsr()
    return (a + a.T).tocsr()


def normalized_laplacian(a: sp.spmatrix) -> sp.csr_matrix:
    """L = I - D^-1/2 A D^-1/2, with D^-1/2 = 0 on isolated nodes (SPEC §9.1)."""
    d = np.asarray(a.sum(axis=1)).ravel()
    inv = np.zeros_like(d)
    inv[d > 0] = 1.0 / np.sqrt(d[d > 0])
    s = sp.diags(inv) @ a @ sp.diags(inv)
    return (sp.identity(a.shape[0]) - s).tocsr()


def lowest_eigenpairs(lap: sp.spmatrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest eigenvalues (ascending) and orthonormal eigenvectors, signs fixed per SPEC §9.1."""
    n = lap.shape[0]
    if not 1 <= k <= n:
        raise DfkdError(f"spectral k={k} must be between 1 and the number of graph nodes ({n})")
    if n <= DENSE_EIGEN_MAX_NODES or k >= n - 1:
        vals, vecs = np.linalg.eigh(lap.toarray())
        vals, vecs = vals[:k], vecs[:, :k]
    else:
        # The smallest eigenvalues of L are the largest of S = I - L: Lanczos converges fast there.
        s = (sp.identity(n) - lap).tocsr()
        mu, vecs = eigsh(s, k=k, which="LA", v0=np.ones(n) / math.sqrt(n), tol=1e-10, maxiter=100 * n)
        order = np.argsort(-mu)
        vals, vecs = 1.0 - mu[order], vecs[:, order]
        vecs, _ = np.linalg.qr(vecs)  # re-orthonormalise in float64 after ARPACK
        vecs = _rayleigh_ritz(lap, vecs)[1]
        vals = np.einsum("ij,ij->j", vecs, lap @ vecs)
        # the Rayleigh quotients of nearly equal eigenvalues can come out a rounding error apart in either
        # order: SPEC §9 requires them ascending (DM712; a bn-cnn's pair block failed on this)
        order = np.argsort(vals, kind="stable")
        vals, vecs = vals[order], vecs[:, order]
    idx = np.argmax(np.abs(vecs), axis=0)  # the first entry of largest magnitude in each column ...
    vecs = vecs * np.sign(vecs[idx, np.arange(vecs.shape[1])])  # ... is made positive
    return np.clip(vals, 0.0, 2.0), vecs


def _rayleigh_ritz(lap: sp.spmatrix, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    small = q.T @ (lap @ q)
    w, u = np.linalg.eigh((small + small.T) / 2)
    return w, q @ u


def eigen_residual(lap: sp.spmatrix, vals: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """Per column, ||L v - lambda v|| (the DM721 check of a stored basis against the model)."""
    v = vecs.astype(np.float64)
    return np.linalg.norm(lap @ v - v * vals[None, :], axis=0)


def path_initializers(model: onnx.ModelProto, src: str, dst: str) -> list[str]:
    """Float initializers used by nodes on paths from tensor src to tensor dst (what defines |J|)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    downstream, frontier = {src}, [src]
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    while frontier:
        t = frontier.pop()
        for n in consumers.get(t, []):
            for o in n.output:
                if o not in downstream:
                    downstream.add(o)
                    frontier.append(o)
    upstream, frontier, names = {dst}, [dst], []
    while frontier:
        node = producers.get(frontier.pop())
        if node is None:
            continue
        on_path = any(o in downstream for o in node.output)
        for i in node.input:
            if on_path and i in inits and inits[i].data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                                   onnx.TensorProto.FLOAT16) and i not in names:
                names.append(i)
            if i and i not in upstream and i != src:
                upstream.add(i)
                frontier.append(i)
    return sorted(names)
