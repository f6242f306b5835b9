# Metadata lives in setup.cfg; this stub lets pip install the project editable.
from setuptools import setup

setup()
