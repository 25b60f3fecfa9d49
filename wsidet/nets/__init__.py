"""Network building blocks shared by methods. Modules here import torch at import time."""
