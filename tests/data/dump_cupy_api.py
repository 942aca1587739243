"""Regenerate ``cupy_api.json``: the names CuPy offers (functions, ndarray methods, ufunc methods,
``cupyx.scipy.special``).

The fake device library in ``tests/fake_device.py`` allows exactly these names,
so code that passes its tests calls nothing CuPy lacks.  CuPy imports without a
GPU, so this runs anywhere CuPy is installed::

    pip install cupy-cuda12x && python tests/data/dump_cupy_api.py
"""


def main(path="tests/data/cupy_api.json"):
    import json  # noqa: PLC0415
    import types  # noqa: PLC0415

    import cupy  # noqa: PLC0415

    out = {"cupy_version": cupy.__version__, "functions": {}, "ufunc_methods": {}}
    for modname in ("", "linalg", "fft", "lib.stride_tricks", "random"):
        mod = cupy
        for part in filter(None, modname.split(".")):
            mod = getattr(mod, part)
        out["functions"][modname] = sorted(
            n for n in dir(mod)
            if not n.startswith("_") and not isinstance(getattr(mod, n, None), types.ModuleType))
    import cupyx.scipy.special  # noqa: PLC0415
    out["functions"]["cupyx.scipy.special"] = sorted(
        n for n in dir(cupyx.scipy.special) if not n.startswith("_"))
    keep = ("__matmul__", "__bool__", "__float__", "__int__", "__index__", "__len__", "__iter__",
            "__array_ufunc__", "__array_function__")
    out["ndarray_methods"] = sorted(n for n in dir(cupy.ndarray)
                                    if not n.startswith("__") or n in keep)
    for n in out["functions"][""]:
        v = getattr(cupy, n)
        if isinstance(v, cupy.ufunc):
            out["ufunc_methods"][n] = [m for m in ("at", "reduce", "accumulate", "outer", "reduceat")
                                       if hasattr(v, m)]
    with open(path, "w") as fh:
        json.dump(out, fh, indent=0, sort_keys=True)


if __name__ == "__main__":
    main()
