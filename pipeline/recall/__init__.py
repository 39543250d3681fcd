"""Recall sources: item-CF, matrix factorisation, content ANN, popularity/trending, candidate merge."""
