"""Only for the optional C helpers (the block encoder, the write loop); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("kstap.capture._ringfast", ["kstap/capture/_ringfast.c"], optional=True,
                  extra_compile_args=["-O2"]),
        Extension("kstap._slices", ["kstap/_slices.c"], optional=True, extra_compile_args=["-O2"]),
    ]
)
