"""Build and install maltrail-engine: the Python packages and their C extensions.

`pip install .` builds the C parts against the running CPython; the console script is
`maltrail-engine`.
"""

from setuptools import Extension, setup

C_FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    name="maltrail-engine",
    version="0.1.0",
    description="Network sensor that matches traffic against Maltrail trails and heuristics",
    python_requires=">=3.11",
    packages=["cli", "config", "events", "events.log", "events.forwarders", "engine", "engine.processes", "engine.transport",
              "engine.sources", "server", "server.api", "server.auth", "server.store", "workers", "workers.heuristics", "matchers",
              "trailsdb", "trailsdb.feeds"],
    package_data={"matchers": ["csrc/*.h"], "server": ["web/*.html", "web/*.css", "web/*.js"], "engine.transport": ["csrc/*.c"], "workers": ["csrc/*.h", "csrc/*.c"]},
    ext_modules=[
        Extension(
            "matchers._native",
            sources=["matchers/csrc/native.c"],
            depends=["matchers/csrc/artifact.h"],
            extra_compile_args=C_FLAGS,
        ),
        Extension("engine.transport._ring", sources=["engine/transport/csrc/ring.c"], extra_compile_args=C_FLAGS),
        Extension(
            "engine.transport._capture",
            sources=["engine/transport/csrc/capture.c"],
            depends=["workers/csrc/decode.h"],
            include_dirs=["workers/csrc"],
            extra_compile_args=C_FLAGS,
        ),
        Extension(
            "workers._fastpath",
            sources=["workers/csrc/fastpath.c"],
            depends=["workers/csrc/decode.h", "matchers/csrc/artifact.h", "workers/csrc/keyhash.h",
                     "workers/csrc/window.h", "workers/csrc/exhaustion.h", "workers/csrc/needles.h",
                     "workers/csrc/relits.h"],
            include_dirs=["workers/csrc", "matchers/csrc"],
            extra_compile_args=C_FLAGS + ["-D_GNU_SOURCE"],
        ),
    ],
    data_files=[("share/maltrail-engine", ["maltrail.toml"])],
    install_requires=[
        "pypcap>=1.3,<2",
        "dpkt>=1.9.8,<2",
        "pyahocorasick>=2.1,<3",
        "pyroaring>=1.0,<2",
        "msgpack>=1.0,<2",
        "zstandard>=0.22,<1",
        "cryptography>=42",
        "tqdm>=4.60",
        "prometheus_client>=0.17,<1",
        "aiohttp>=3.9,<4",
        "argon2-cffi>=21.3",
    ],
    extras_require={"test": ["pytest>=8", "hypothesis>=6.100", "playwright>=1.40"]},
    entry_points={"console_scripts": ["maltrail-engine=cli:main"]},
)
