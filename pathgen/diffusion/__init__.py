"""Diffusion schedules and samplers (the fused step lives in ``pathgen.ops``)."""
from pathgen.diffusion.schedule import NoiseSchedule, ScheduleConfig, ddim_timesteps

__all__ = ["NoiseSchedule", "ScheduleConfig", "ddim_timesteps"]
