"""storm_st.datasets."""
