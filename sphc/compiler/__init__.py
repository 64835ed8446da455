"""The compiler: .sph text → AST → IR → analysis → plan → Python source (stages in pipeline order)."""
