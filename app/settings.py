"""Every setting of the service, read from ``AESERVE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class Settings(BaseSettings):
    """Service settings; ``AESERVE_MAX_BATCH=64`` sets ``max_batch``, and so on."""

    model_config = SettingsConfigDict(env_prefix="AESERVE_", extra="ignore")

    models_dir: Path = Field(DEFAULT_MODELS_DIR, description="folder of <name>/<version>/ SavedModels")
    max_body_bytes: int = Field(16 * 2**20, gt=0, description="largest request body accepted (413 above)")
    max_batch: int = Field(1024, gt=0, description="most images in one request (413 above)")
    max_image_pixels: int = Field(16_000_000, gt=0, description="most pixels of one uploaded image (413 above)")
    warmup: bool = Field(True, description="run each model once on a dummy batch before reporting ready")
    log_level: str = Field("info", description="Python log level of the service's own logger")
