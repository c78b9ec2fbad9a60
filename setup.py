"""Packaging beyond pyproject.toml: a built wheel carries the bundled models and held-out photos.

They stay in data/ (a retrain replaces the files there, nothing else), and ``build_py`` copies them into the wheel
as ``sr3_mini/_bundled/``, where ``sr3_mini.data.data_dir()`` finds them after a non-editable install. An editable
install reads data/ itself. The training photos (data/train*) ship with the repository only.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# relative to data/; SHA256SUMS: load_pretrained checks the models against it
BUNDLED = ["sr3_mini_x4.pt", "sr3_mini_x4.pt.variance.json", "regression_x4.pt", "sr3_stage2_x4.pt", "MODEL_CARD.md",
           "SHA256SUMS", "eval/*.png"]


class build_py_with_data(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        src, dst = Path(__file__).resolve().parent / "data", Path(self.build_lib) / "sr3_mini" / "_bundled"
        for pattern in BUNDLED:
            for f in sorted(src.glob(pattern)):
                (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dst / f.relative_to(src))


setup(cmdclass={"build_py": build_py_with_data})
