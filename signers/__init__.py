"""Built-in plugins, registered through the `hocba_hub` entry-point group like any other."""
