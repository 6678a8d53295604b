"""`ft train`: options (`config`), the DeepSpeed engine (`engine`), the run directory
(`rundir`), step statistics (`stats`), the policy update (`update`) and the loop (`loop`)."""
