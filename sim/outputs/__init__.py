"""What a run leaves behind: run folders (``run_folder``), plots (``plots``), Perfetto timelines (``timeline``)
and comparison reports (``report``)."""
