"""The language server: inline code completion from Tandem's shared engine."""
