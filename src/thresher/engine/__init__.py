"""Running scorers over datasets: sharded, cached, resumable; manifests of runs."""
