"""The worker's steps, one module each: source → decode → features → score → decide → publish → commit."""
