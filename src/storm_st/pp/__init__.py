"""storm_st.pp."""
