"""`ft score`: FlowTracer credit of given (prompt, response) pairs (`pairs`) and its terminal /
HTML view (`render`)."""
