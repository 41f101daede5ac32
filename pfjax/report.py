"""`pfjax.explain`: what was fused, what was not and why, the GIR, the source, the bytes."""
from __future__ import annotations

from collections import Counter

from pfjax import gir
from pfjax.compile import Plan, group_bytes, target
from pfjax.passes.reuse import describe as describe_reuse


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**16 else f"{n} B"


class Report:
    def __init__(self, plan: Plan):
        self.plan = plan

    @property
    def groups(self):
        return self.plan.groups

    @property
    def left_out(self):
        """[(primitive name, reason)] for every equation XLA runs."""
        recomputed = {id(e) for gp in self.plan.groups for e in gp.group.recomputed}
        return [(e.name, "recomputed inside a fused kernel" if id(e) in recomputed else r)
                for e, r in self.plan.partition.left_out]

    @property
    def num_kernels(self) -> int:
        return sum(gp.ref is not None for gp in self.plan.groups)

    def __str__(self) -> str:
        p = self.plan
        out = [f"pfjax: {len(p.program.eqns)} equations, {len(p.groups)} fusion group(s), "
               f"{self.num_kernels} compiled kernel(s)"]
        total_f = total_u = 0
        for k, gp in enumerate(p.groups):
            g = gp.group
            fused, unfused = group_bytes(gp)
            total_f += fused
            total_u += unfused
            ops = Counter(e.name for e in g.eqns)
            out.append("")
            out.append(f"== group {k}: {len(g.eqns)} ops over {g.space} "
                       f"({', '.join(f'{n} x{c}' if c > 1 else n for n, c in ops.items())})")
            if g.recomputed:
                out.append(f"   recomputed inside: {', '.join(e.name for e in g.recomputed)}")
            out.append(f"   inputs: {', '.join(a.aval.str_short() for a in g.inputs)}")
            out.append(f"   outputs: {', '.join(v.aval.str_short() for v in g.outputs)}")
            out.append(f"   bytes moved: fused {_mib(fused)} vs unfused {_mib(unfused)}"
                       + (f" ({unfused / fused:.1f}x less)" if fused else ""))
            if gp.ref is not None and gp.ref.target:
                out.append(f"   kernel: {gp.ref.target}  schedule: {gp.schedule.to_json()}")
                out.append(f"   source: {gp.source_path}")
            else:
                out.append(f"   runs with XLA: {gp.problem}")
            if gp.ref is not None and gp.ref.cuda:
                out.append(f"   CUDA kernel: {gp.ref.cuda}")
            elif gp.cuda_problem:
                out.append(f"   on the GPU, runs with XLA: {gp.cuda_problem}")
            if gp.kernel is not None and gp.kernel.parallel.rdims:
                out.append(f"   reduces over {tuple(g.axes)}; reused values:")
                for line in describe_reuse(gp.kernel, target()):
                    out.append(f"     {line}")
            if gp.kernel_before is not None:
                out.append("   -- GIR as lowered --")
                out.append(_indent(gir.format_kernel(gp.kernel_before)))
            if gp.kernel is not None:
                out.append(f"   -- GIR after passes ({', '.join(n for n, _ in gp.passes)}) and schedule --")
                out.append(_indent(gir.format_kernel(gp.kernel)))
        out.append("")
        left = Counter(self.left_out)
        if left:
            out.append("== left to XLA ==")
            for (name, reason), count in sorted(left.items()):
                out.append(f"   {name}{f' x{count}' if count > 1 else ''}: {reason}")
        out.append("")
        out.append(f"total bytes moved by fused groups: {_mib(total_f)} fused vs {_mib(total_u)} unfused")
        return "\n".join(out)

    __repr__ = __str__


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())
